//! cuBLASLt plans for [`super::gemm`]'s strided-batched GEMMs: the host cost of a GEMM, not
//! its GPU time, bounds small models (SmolLM2-135M's step was host-bound, and a third of the
//! host's time went inside `cublasGemmStridedBatchedEx`, which sets up descriptors and asks
//! its heuristic again on every call). Here each distinct problem (shapes, leading dims,
//! strides, dtypes, transposes, pointer alignment) gets its matmul descriptor, matrix layouts
//! and algorithm once, and every later call is one `cublasLtMatmul`.
//!
//! Numerics: fp32 accumulation and fp32 scalars, as the `cublasGemmStridedBatchedEx` call it
//! replaces (`CUBLAS_COMPUTE_32F`: no TF32). The algorithm may differ from the one GemmEx would
//! pick, so results can differ in the last bits (the GPU checks compare against the CPU with
//! tolerances, never against GemmEx bit for bit). A problem the heuristic has no algorithm for
//! is remembered as such and goes to GemmEx.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Arc;

use burn::tensor::DType;
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::gemm::{Gemm, Mat};

/// Hopper's recommended cuBLASLt workspace (NVIDIA: 32 MiB on sm_90, 4 MiB before).
const WORKSPACE_BYTES: usize = 32 << 20;

/// What makes two GEMMs the same problem for cuBLASLt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    dtype: DType,
    out_dtype: DType,
    ta: bool,
    tb: bool,
    mnk_batch: [usize; 4],
    /// a, b, c: leading dimension, batch stride, pointer alignment (bytes, ≤ 256).
    mats: [(usize, usize, u32); 3],
    /// The epilogue and its auxiliary matrix's leading dimension (0 without one).
    epilogue: (Epilogue, usize),
}

/// What cuBLASLt does to the product before writing it (`c = α·op(a)·op(b)`, then): nothing;
/// add a bias row (one value per output column in our row-major view); add it and apply the
/// tanh-approximated GELU (HF's `gelu_new`), also writing the pre-activation to an auxiliary
/// matrix of `c`'s shape (`GeluAuxBias`); or multiply by `gelu'` of an auxiliary matrix
/// holding the pre-activation (`DGelu`, the backward of `GeluAuxBias`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Epilogue {
    None,
    Bias,
    GeluBias,
    GeluAuxBias,
    DGelu,
}

impl Epilogue {
    fn lt(self) -> sys::cublasLtEpilogue_t {
        use sys::cublasLtEpilogue_t as E;
        match self {
            Self::None => E::CUBLASLT_EPILOGUE_DEFAULT,
            Self::Bias => E::CUBLASLT_EPILOGUE_BIAS,
            Self::GeluBias => E::CUBLASLT_EPILOGUE_GELU_BIAS,
            Self::GeluAuxBias => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
            Self::DGelu => E::CUBLASLT_EPILOGUE_DGELU,
        }
    }

    pub(crate) fn has_bias(self) -> bool {
        matches!(self, Self::Bias | Self::GeluBias | Self::GeluAuxBias)
    }

    pub(crate) fn has_aux(self) -> bool {
        matches!(self, Self::GeluAuxBias | Self::DGelu)
    }
}

/// An epilogue's device pointers for one call: the bias vector and the auxiliary matrix (0 where
/// the epilogue has none), and the latter's leading dimension in elements.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EpilogueArgs {
    pub kind: Epilogue,
    pub bias: u64,
    pub aux: u64,
    pub aux_ld: usize,
}

impl EpilogueArgs {
    pub(crate) const NONE: Self = Self {
        kind: Epilogue::None,
        bias: 0,
        aux: 0,
        aux_ld: 0,
    };
}

impl Key {
    pub(crate) fn new(
        dtype: DType,
        out_dtype: DType,
        g: &Gemm,
        mats: [Mat; 3],
        ptrs: [u64; 3],
        epi: &EpilogueArgs,
    ) -> Self {
        let m = |i: usize| (mats[i].ld, mats[i].stride, alignment(ptrs[i]));
        Self {
            dtype,
            out_dtype,
            ta: g.ta,
            tb: g.tb,
            mnk_batch: [g.m, g.n, g.k, g.batch],
            mats: [m(0), m(1), m(2)],
            epilogue: (epi.kind, if epi.kind.has_aux() { epi.aux_ld } else { 0 }),
        }
    }
}

/// The largest power of two (≤ 256, cuBLASLt's default requirement) dividing `ptr`.
fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        1u32 << ptr.trailing_zeros().min(8)
    }
}

fn lt_type(dtype: DType) -> sys::cudaDataType {
    match dtype {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        other => panic!("qtune-kernels: cuBLASLt GEMM supports F32, F16, BF16, not {other:?}"),
    }
}

/// A problem's descriptor, layouts (A, B, C = D) and chosen algorithm.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by `Lt::plan`, destroyed once here; never used after.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts.into_iter().filter(|l| !l.is_null()) {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

/// One cuBLASLt handle, its workspace and its plans, for one (device, cubecl stream): used
/// only under the mutex of `gemm.rs`' per-stream entry, so never by two threads at once.
pub(crate) struct Lt {
    handle: sys::cublasLtHandle_t,
    /// Owns the workspace memory; `ws_ptr` is its device address, taken once.
    _workspace: CudaSlice<u8>,
    ws_ptr: u64,
    plans: HashMap<Key, Option<Plan>>,
}

// SAFETY: the raw handles are only touched through `&mut self` under gemm.rs' mutex.
unsafe impl Send for Lt {}

impl Lt {
    /// A handle and a workspace allocated through `own` (a stream of the same context as the
    /// cubecl stream the GEMMs run on; device memory is usable from any stream of the context).
    pub(crate) fn new(own: &Arc<CudaStream>) -> Option<Self> {
        let handle = lt::create_handle().ok()?;
        // SAFETY: the workspace is scratch for cuBLASLt; its contents are never read by us.
        let workspace = unsafe { own.alloc::<u8>(WORKSPACE_BYTES) }.ok()?;
        // The allocation may be ordered on `own` (stream-ordered allocator); the GEMMs use it on
        // cubecl's stream, so wait once until it exists.
        own.synchronize().ok()?;
        let ws_ptr = {
            let (p, _record) = workspace.device_ptr(own);
            p
        };
        Some(Self {
            handle,
            _workspace: workspace,
            ws_ptr,
            plans: HashMap::new(),
        })
    }

    /// `c = α·op(a)·op(b) + β·c`, then `epi`'s epilogue, as `gemm.rs`' row-major convention
    /// (see `strided_gemm`), on `stream`; `false` when cuBLASLt has no algorithm for the problem
    /// (nothing enqueued).
    ///
    /// # Safety
    /// The pointers address live buffers holding the described matrices (the epilogue's bias
    /// `[n]` and auxiliary matrix `[m, n]` with rows `aux_ld` apart too), ordered on `stream`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn matmul(
        &mut self,
        key: Key,
        g: &Gemm,
        mats: [Mat; 3],
        ptrs: [u64; 3],
        epi: &EpilogueArgs,
        stream: *mut c_void,
    ) -> bool {
        let ws_ptr = self.ws_ptr;
        let handle = self.handle;
        let plan = self
            .plans
            .entry(key)
            .or_insert_with(|| plan(handle, &key, g, mats));
        let Some(plan) = plan else {
            return false;
        };
        // The epilogue's pointers are per call: set on the plan's descriptor just before.
        use sys::cublasLtMatmulDescAttributes_t as D;
        let set_ptr = |attr, p: u64| {
            // SAFETY: a live descriptor; the attribute is a device pointer (8 bytes).
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    attr,
                    &p as *const u64 as *const c_void,
                    size_of::<u64>(),
                )
            }
            .is_ok()
        };
        if epi.kind.has_bias() && !set_ptr(D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, epi.bias) {
            return false;
        }
        if epi.kind.has_aux() && !set_ptr(D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, epi.aux) {
            return false;
        }
        // Column-major view, as the GemmEx call: cᵀ[n, m] = op(b)ᵀ·op(a)ᵀ, so cuBLASLt's A is
        // our b and its B our a.
        let [pa, pb, pc] = ptrs;
        // SAFETY: the plan's descriptors describe these buffers (caller); the workspace is ours.
        unsafe {
            lt::matmul(
                handle,
                plan.desc,
                &g.alpha as *const f32 as *const c_void,
                &g.beta as *const f32 as *const c_void,
                pb as *const c_void,
                plan.layouts[0],
                pa as *const c_void,
                plan.layouts[1],
                pc as *const c_void,
                plan.layouts[2],
                pc as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                ws_ptr as *mut c_void,
                WORKSPACE_BYTES,
                stream as sys::cudaStream_t,
            )
        }
        .is_ok()
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in `new`, destroyed once, after its plans.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// The descriptor, layouts and heuristic's first algorithm of one problem; `None` when any step
/// fails or no algorithm fits (the GemmEx fallback then serves it).
fn plan(handle: sys::cublasLtHandle_t, key: &Key, g: &Gemm, mats: [Mat; 3]) -> Option<Plan> {
    let i = |v: usize| i64::try_from(v).ok();
    let (ty, out_ty) = (lt_type(key.dtype), lt_type(key.out_dtype));
    let desc = lt::create_matmul_desc(
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        sys::cudaDataType::CUDA_R_32F,
    )
    .ok()?;
    // The plan owns what was created so far: an early return destroys it.
    let mut p = Plan {
        desc,
        layouts: [std::ptr::null_mut(); 3],
        algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
    };
    let (ma, mb, mc) = (mats[0], mats[1], mats[2]);
    // Stored (pre-op) shapes, column-major: A = our b, B = our a (see `Lt::matmul`).
    let (a_rows, a_cols) = if g.tb { (g.k, g.n) } else { (g.n, g.k) };
    let (b_rows, b_cols) = if g.ta { (g.m, g.k) } else { (g.k, g.m) };
    let specs = [
        (ty, a_rows, a_cols, mb.ld, mb.stride),
        (ty, b_rows, b_cols, ma.ld, ma.stride),
        (out_ty, g.n, g.m, mc.ld, mc.stride),
    ];
    let batch = i32::try_from(g.batch).ok()?;
    for (slot, (t, rows, cols, ld, stride)) in specs.into_iter().enumerate() {
        let l = lt::create_matrix_layout(t, rows as u64, cols as u64, i(ld)?).ok()?;
        p.layouts[slot] = l;
        let stride = i(stride)?;
        // SAFETY: a live layout; the attribute buffers have the documented types.
        unsafe {
            lt::set_matrix_layout_attribute(
                l,
                sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                &batch as *const i32 as *const c_void,
                size_of::<i32>(),
            )
            .ok()?;
            lt::set_matrix_layout_attribute(
                l,
                sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                &stride as *const i64 as *const c_void,
                size_of::<i64>(),
            )
            .ok()?;
        }
    }
    // cuBLAS operations: 0 = N, 1 = T (A's op is tb, B's is ta, as the GemmEx call).
    let (op_a, op_b) = (i32::from(g.tb), i32::from(g.ta));
    let pref = lt::create_matmul_pref().ok()?;
    let ws = WORKSPACE_BYTES as u64;
    let [(_, _, al_a), (_, _, al_b), (_, _, al_c)] = key.mats;
    // SAFETY: live descriptors; the attribute buffers have the documented types.
    let found = unsafe {
        let set_op = |attr, v: &i32| {
            lt::set_matmul_desc_attribute(
                desc,
                attr,
                v as *const i32 as *const c_void,
                size_of::<i32>(),
            )
        };
        let set_pref =
            |attr, v: *const c_void, n: usize| lt::set_matmul_pref_attribute(pref, attr, v, n);
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        // The epilogue (its aux leading dimension is part of the problem: in `key`).
        let (epi, aux_ld) = key.epilogue;
        let epi_attr = epi.lt() as u32;
        let aux_ld = aux_ld as i64;
        let ok = lt::set_matmul_desc_attribute(
            desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &epi_attr as *const u32 as *const c_void,
            size_of::<u32>(),
        )
        .and_then(|_| {
            if !epi.has_aux() {
                return Ok(());
            }
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                &aux_ld as *const i64 as *const c_void,
                size_of::<i64>(),
            )
        })
        .and_then(|_| {
            set_op(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &op_a,
            )
        })
        .and_then(|_| {
            set_op(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &op_b,
            )
        })
        .and_then(|_| {
            set_pref(
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                size_of::<u64>(),
            )
        })
        // Lt's A is our b, its B our a; C and D are our c.
        .and_then(|_| {
            [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_b),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_a),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_c),
            ]
            .into_iter()
            .try_for_each(|(attr, v)| {
                set_pref(attr, &v as *const u32 as *const c_void, size_of::<u32>())
            })
        });
        let found = ok.and_then(|_| {
            lt::get_matmul_algo_heuristic(
                handle,
                desc,
                p.layouts[0],
                p.layouts[1],
                p.layouts[2],
                p.layouts[2],
                pref,
            )
        });
        let _ = lt::destroy_matmul_pref(pref);
        found
    };
    let h = found.ok()?;
    if h.workspaceSize > WORKSPACE_BYTES {
        return None;
    }
    p.algo = h.algo;
    Some(p)
}
