//! `cat` of 1-D tensors as device-to-device copies: the optimizer gathers a group's values and
//! gradients (hundreds of LoRA factors) every step, and Burn's `cat` launches a kernel per part,
//! each costing the host more than the copy costs the GPU. Here the caller hands one task to
//! cubecl's device thread, which enqueues one `cuMemcpyDtoDAsync` per part on the stream the
//! kernels run on (ordered after each part's last writer, as a launch would be).

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;

use super::gemm::{device_handle, lookup, stop_on_device_failure, Operand, Server};
use super::launch::empty;

/// The parts (bindings and byte lengths) and the output of one concatenation.
struct CatTask {
    parts: Vec<(Operand, usize)>,
    out: Operand,
}

impl CatTask {
    fn run(self, server: &mut Server) {
        let one = |server: &mut Server, o: &Operand| {
            lookup(
                server,
                std::slice::from_ref(o).try_into().expect("one operand"),
            )
        };
        let (dst, stream) = match one(server, &self.out) {
            Ok(([p], s)) => (p, s),
            Err(e) => return stop_on_device_failure("a device copy", e),
        };
        let mut at = dst;
        for (part, bytes) in &self.parts {
            let src = match one(server, part) {
                Ok(([p], _)) => p,
                Err(e) => return stop_on_device_failure("a device copy", e),
            };
            if *bytes > 0 {
                // SAFETY: `src` holds `bytes` bytes (the part, contiguous) and `at` lies inside
                // the output, which holds the sum of the parts' bytes; both stay allocated until
                // this task's bindings drop, after the copy is enqueued on `stream`, the stream
                // their other uses are ordered on.
                let status =
                    unsafe { cudarc::driver::sys::cuMemcpyDtoDAsync_v2(at, src, *bytes, stream) };
                if status != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                    return stop_on_device_failure(
                        "a device copy",
                        format!("cuMemcpyDtoDAsync of {bytes} bytes: {status:?}"),
                    );
                }
            }
            at += *bytes as u64;
        }
    }
}

/// `cat(parts, 0)` of 1-D tensors of one dtype.
///
/// # Panics
/// With no parts, or parts of different dtypes (wiring bugs).
pub(crate) fn cat_flat(parts: Vec<CubeTensor<CudaRuntime>>) -> CubeTensor<CudaRuntime> {
    let first = parts.first().expect("qtune-kernels: cat of no tensors");
    let dtype = first.dtype;
    assert!(
        parts.iter().all(|t| t.dtype == dtype),
        "qtune-kernels: cat of tensors of different dtypes"
    );
    let total = parts.iter().map(|t| t.meta.num_elements()).sum();
    let out = empty(first, vec![total], dtype);
    let index = out.device.index;
    let parts = parts
        .into_iter()
        .map(into_contiguous)
        .map(|t| (Operand::of(&t), t.meta.num_elements() * dtype.size()))
        .collect();
    let task = CatTask {
        parts,
        out: Operand::of(&out),
    };
    device_handle(index).submit(move |server| task.run(server));
    out
}
