use crate::{
    WmmaCompiler,
    compute::{CudaServer, context::CudaContext},
    device::CudaDevice,
};
use cubecl_common::{
    device::{Device, DeviceService},
    profile::TimingMethod,
};
use cubecl_core::{
    MemoryConfiguration, Runtime,
    device::{DeviceId, ServerUtilitiesHandle},
    ir::{
        BarrierLevel, ContiguousElements, DeviceProperties, ElemType, FloatKind,
        HardwareProperties, MatrixLayout, MemoryDeviceProperties, MmaProperties, OpaqueType,
        SemanticType, StorageType, TargetProperties, Type, VectorSize,
        features::{AtomicUsage, Plane, Tma, TypeUsage},
    },
    server::ServerUtilities,
    zspace::{Shape, Strides, striding::has_pitched_row_major_strides},
};
use cubecl_cpp::{
    ComputeKernel, DialectWmmaCompiler,
    cuda::{CudaDialect, arch::CudaArchitecture, mma::contiguous_elements_cuda},
    register_supported_types,
    shared::{
        CompilationOptions, CppCompiler, CppSupportedFeatures, register_mma_features,
        register_scaled_mma_features, register_wmma_features,
    },
};
use cubecl_runtime::{
    allocator::PitchedMemoryLayoutPolicy,
    client::ComputeClient,
    logging::ServerLogger,
    memory_management::{MemoryPoolOptions, PoolType},
};
use cudarc::driver::sys::{CUDA_VERSION, cuDeviceTotalMem_v2};
use std::{mem::MaybeUninit, sync::Arc};

/// Options configuring the CUDA runtime.
#[derive(Default)]
pub struct RuntimeOptions {
    /// Configures the memory management.
    pub memory_config: MemoryConfiguration,
}

#[derive(Debug, Clone)]
pub struct CudaRuntime;

/// qtune patch: the memory pool preset, read from `CUBECL_CUDA_MEMORY` (`init` takes no options):
/// - unset or `hybrid`: `hybrid:1:128` (below);
/// - `hybrid:L:P` (MiB, 1 ≤ L < P ≤ 4096): the exclusive classes of `exclusive` up to L MiB, then
///   one sliced pool of P MiB pages for every request above the last such class up to P MiB (a
///   page holds several tensors and freed neighbours merge, so transients of different sizes
///   share pages: the MLP's 128 MiB intermediates and attention's 64 MiB scores are never alive
///   at once), then the classes above P. Measured on an H100 (qtune BENCHMARKS.md, session 22):
///   GPT-J-6B NF4 q,v reserves 4.50 GiB for 4.18 in use parked (`exclusive`: 4.73), Llama-2-7B
///   6.35 for 5.35 (7.14), at the same speed;
/// - `exclusive`: `MemoryConfiguration::ExclusivePages` (upstream's preset of that name, 24 size
///   classes from 32 KiB to a quarter of the device's memory, a page per tensor); qtune's
///   default before session 22: reserved 5.95 GiB instead of upstream's 10.94 for 5.21 in use;
/// - `exclusive:N`: the same pools with N size classes (2 ≤ N ≤ 512), each class a ratio
///   (max/min)^(1/(N−1)) wide, so a page serves requests at most that much smaller than itself;
///   `exclusive:24` is `exclusive`;
/// - `subslices`: upstream's default (`SubSlices`).
///
/// Anything else is refused: [`check_memory_setting`] says so before any work (qtune calls it
/// before a model is built), and the server's start stops the process naming the variable
/// (never a silent default).
fn memory_config_from_env(max_page_size: u64, alignment: u64) -> MemoryConfiguration {
    let v = std::env::var(MEMORY_ENV).ok();
    match parse_memory_setting(v.as_deref()) {
        Ok(MemorySetting::Exclusive) => MemoryConfiguration::ExclusivePages,
        Ok(MemorySetting::SubSlices) => MemoryConfiguration::default(),
        Ok(MemorySetting::ExclusiveClasses(n)) => MemoryConfiguration::Custom {
            pool_options: exclusive_pools(n, max_page_size, alignment),
        },
        Ok(MemorySetting::Hybrid { lo_mib, page_mib }) => MemoryConfiguration::Custom {
            pool_options: hybrid_pools(lo_mib << 20, page_mib << 20, max_page_size, alignment),
        },
        Err(expected) => panic!(
            "{MEMORY_ENV}={:?}: accepted values are {expected}",
            v.unwrap_or_default()
        ),
    }
}

/// qtune patch: the variable [`memory_config_from_env`] reads.
pub const MEMORY_ENV: &str = "CUBECL_CUDA_MEMORY";

/// qtune patch: `Err(accepted values)` when [`MEMORY_ENV`] holds a value the server would refuse
/// at its start; for callers that check settings before any work.
pub fn check_memory_setting() -> Result<(), String> {
    parse_memory_setting(std::env::var(MEMORY_ENV).ok().as_deref()).map(|_| ())
}

enum MemorySetting {
    Exclusive,
    ExclusiveClasses(usize),
    SubSlices,
    Hybrid { lo_mib: u64, page_mib: u64 },
}

/// The preset when `CUBECL_CUDA_MEMORY` is unset: exclusive pages up to 1 MiB, 128 MiB sliced
/// pages above (the best of the settings measured on GPT-J-6B and Llama-2-7B shapes).
const DEFAULT_HYBRID: MemorySetting = MemorySetting::Hybrid {
    lo_mib: 1,
    page_mib: 128,
};

fn parse_memory_setting(v: Option<&str>) -> Result<MemorySetting, String> {
    match v {
        None | Some("hybrid") => Ok(DEFAULT_HYBRID),
        Some("exclusive") => Ok(MemorySetting::Exclusive),
        Some("subslices") => Ok(MemorySetting::SubSlices),
        Some(s) => {
            if let Some(Ok(n)) = s.strip_prefix("exclusive:").map(str::parse::<usize>) {
                if (2..=512).contains(&n) {
                    return Ok(MemorySetting::ExclusiveClasses(n));
                }
            }
            let hybrid = s.strip_prefix("hybrid:").and_then(|r| r.split_once(':'));
            if let Some((Ok(lo_mib), Ok(page_mib))) =
                hybrid.map(|(l, p)| (l.parse::<u64>(), p.parse::<u64>()))
            {
                if 1 <= lo_mib && lo_mib < page_mib && page_mib <= 4096 {
                    return Ok(MemorySetting::Hybrid { lo_mib, page_mib });
                }
            }
            Err("hybrid (the default, hybrid:1:128), hybrid:L:P (MiB, 1 <= L < P <= 4096), \
                 exclusive, exclusive:N (2 <= N <= 512 size classes) and subslices"
                .into())
        }
    }
}

/// The pools of upstream's `ExclusivePages` preset with `n` size classes instead of 24: sizes
/// log-uniform from 32 KiB to `max_page_size`, aligned and deduplicated, and the same
/// deallocation period (5,000 allocations, more for pages over 1 GiB).
fn exclusive_pools(n: usize, max_page_size: u64, alignment: u64) -> Vec<MemoryPoolOptions> {
    let (lo, hi) = ((32u64 * 1024) as f64, max_page_size as f64);
    let mut sizes: Vec<u64> = (0..n)
        .map(|i| {
            let p = i as f64 / (n - 1) as f64;
            ((lo.ln() + (hi.ln() - lo.ln()) * p).exp() as u64).next_multiple_of(alignment)
        })
        .collect();
    sizes.dedup();
    sizes
        .into_iter()
        .map(|size| MemoryPoolOptions {
            pool_type: PoolType::ExclusivePages {
                max_alloc_size: size,
            },
            dealloc_period: Some(
                (5000.0 * (1.0 + size as f64 / (1024.0 * 1024.0 * 1024.0)).round()) as u64,
            ),
        })
        .collect()
}

/// `hybrid:L:P`'s pools ([`memory_config_from_env`]): the 24 exclusive classes of at most `lo`
/// bytes, one sliced pool of `page`-byte pages (it takes every request up to `page` that no
/// class before it took), the classes above `page`.
fn hybrid_pools(lo: u64, page: u64, max_page_size: u64, alignment: u64) -> Vec<MemoryPoolOptions> {
    let classes = exclusive_pools(24, max_page_size, alignment);
    let size = |p: &MemoryPoolOptions| match p.pool_type {
        PoolType::ExclusivePages { max_alloc_size } => max_alloc_size,
        PoolType::SlicedPages { page_size, .. } => page_size,
    };
    let page = page.next_multiple_of(alignment);
    let below = classes.iter().filter(|p| size(p) <= lo).cloned();
    let sliced = MemoryPoolOptions {
        pool_type: PoolType::SlicedPages {
            page_size: page,
            max_slice_size: page,
        },
        dealloc_period: None,
    };
    let above = classes.iter().filter(|p| size(p) > page).cloned();
    below.chain(std::iter::once(sliced)).chain(above).collect()
}

impl DeviceService for CudaServer {
    fn init(device_id: cubecl_common::device::DeviceId) -> Self {
        let device = CudaDevice::from_id(device_id);

        // To get the supported WMMA features, and memory properties, we have to initialize the server immediately.
        cudarc::driver::result::init().unwrap();
        let device_index = device.index as i32;
        let device_ptr = cudarc::driver::result::device::get(device_index).unwrap();
        let arch_major;
        // SAFETY: Calling CUDA driver FFI to query compute capability attributes.
        // `device_ptr` is a valid device handle obtained from `cudarc::driver::result::device::get`.
        let arch_version = unsafe {
            arch_major = cudarc::driver::result::device::get_attribute(
            device_ptr,
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
        )
        .unwrap();
            let minor = cudarc::driver::result::device::get_attribute(
            device_ptr,
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
        )
        .unwrap();
            arch_major * 10 + minor
        } as u32;

        // This is the alignment returned by `cuMallocPitched`, so it's the one considered optimal
        // for row alignment by CUDA. This hasn't changed since at least the GTX 700 series.
        // Querying texture row align is a heuristic, but also not guaranteed to be the same.
        let mem_alignment = 512;

        // Ask the wmma compiler for its supported combinations
        let arch = CudaArchitecture {
            version: arch_version,
        };
        let supported_wmma_combinations = WmmaCompiler::supported_wmma_combinations(&arch);
        let supported_mma_combinations = WmmaCompiler::supported_mma_combinations(&arch);
        let supported_scaled_mma_combinations =
            WmmaCompiler::supported_scaled_mma_combinations(&arch);

        // SAFETY: `device_ptr` is a valid CUDA device. `primary_ctx::retain` returns the
        // primary context which is then set as current for the calling thread.
        let ctx = unsafe {
            let ctx = cudarc::driver::result::primary_ctx::retain(device_ptr).unwrap();
            cudarc::driver::result::ctx::set_current(ctx).unwrap();
            ctx
        };

        // SAFETY: `device_ptr` is valid. `cuDeviceTotalMem_v2` writes the total device memory
        // into the `MaybeUninit`, making `assume_init()` valid on success.
        let max_memory = unsafe {
            let mut bytes = MaybeUninit::uninit();
            cuDeviceTotalMem_v2(bytes.as_mut_ptr(), device_ptr);
            bytes.assume_init() as u64
        };
        let mem_properties = MemoryDeviceProperties {
            max_page_size: max_memory / 4,
            alignment: mem_alignment as u64,
        };

        let mut comp_opts = CompilationOptions {
            supports_features: CppSupportedFeatures {
                fast_math: true,
                ..Default::default()
            },
            ..Default::default()
        };

        // SAFETY: `device_ptr` is a valid CUDA device. All `get_attribute` calls query
        // read-only device properties via the CUDA driver API.
        let hardware_props = unsafe {
            use cudarc::driver::{result::device::get_attribute, sys::CUdevice_attribute::*};
            let warp_size =
                get_attribute(device_ptr, CU_DEVICE_ATTRIBUTE_WARP_SIZE).unwrap() as u32;
            let max_shared = get_attribute(
                device_ptr,
                CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .unwrap() as usize;
            let max_threads = get_attribute(device_ptr, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
                .unwrap() as u32;
            let block_dim_x =
                get_attribute(device_ptr, CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X).unwrap();
            let block_dim_y =
                get_attribute(device_ptr, CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y).unwrap();
            let block_dim_z =
                get_attribute(device_ptr, CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z).unwrap();
            let max_cube_dim = (block_dim_x as u32, block_dim_y as u32, block_dim_z as u32);

            let grid_dim_x = get_attribute(device_ptr, CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X).unwrap();
            let grid_dim_y = get_attribute(device_ptr, CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y).unwrap();
            let grid_dim_z = get_attribute(device_ptr, CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z).unwrap();
            let max_cube_count = (grid_dim_x as u32, grid_dim_y as u32, grid_dim_z as u32);

            let num_streaming_multiprocessors = Some(
                get_attribute(device_ptr, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).unwrap() as u32,
            );
            let num_tensor_cores = tensor_cores_per_sm(arch_version);

            comp_opts.warp_size = warp_size;

            HardwareProperties {
                load_width: 128,
                plane_size_min: warp_size,
                plane_size_max: warp_size,
                max_bindings: crate::device::CUDA_MAX_BINDINGS,
                max_shared_memory_size: max_shared,
                max_cube_count,
                max_units_per_cube: max_threads,
                max_cube_dim,
                num_streaming_multiprocessors,
                num_tensor_cores,
                min_tensor_cores_dim: if supported_wmma_combinations.is_empty() {
                    None
                } else {
                    Some(8)
                },
                num_cpu_cores: None,
                max_vector_size: VectorSize::MAX,
            }
        };

        let mut device_props = DeviceProperties::new(
            Default::default(),
            mem_properties.clone(),
            hardware_props,
            TimingMethod::System,
        );
        register_supported_types(&mut device_props);
        device_props.register_type_usage(ElemType::Float(FloatKind::TF32), TypeUsage::Conversion);
        if arch_version >= 60 {
            device_props.register_atomic_type_usage(
                Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F64))),
                AtomicUsage::Add | AtomicUsage::LoadStore,
            );
        }
        if arch_version >= 70 {
            device_props.register_atomic_type_usage(
                Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F16))),
                AtomicUsage::Add | AtomicUsage::LoadStore,
            );
            device_props.register_atomic_type_usage(
                Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F16))).with_vector_size(2),
                AtomicUsage::Add | AtomicUsage::LoadStore,
            );
            device_props.register_semantic_type(SemanticType::Pipeline);
            device_props
                .register_type_usage(OpaqueType::Barrier(BarrierLevel::Unit), TypeUsage::Buffer);
            device_props
                .register_type_usage(OpaqueType::Barrier(BarrierLevel::Cube), TypeUsage::Buffer);
            device_props.features.plane.insert(Plane::Sync);
            comp_opts.supports_features.grid_constants = true;
        }

        if arch_version >= 75 {
            device_props
                .features
                .matmul
                .ldmatrix
                .insert(ElemType::Float(FloatKind::F16).into());
            device_props
                .features
                .matmul
                .ldmatrix
                .insert(ElemType::Float(FloatKind::BF16).into());
            comp_opts.supports_features.fast_tanh = CUDA_VERSION >= 12080;
        }

        if arch_version >= 80 {
            device_props.features.copy_async = true;
        }

        // NOTE: I commented that since I observed synchronisation issues with atomic add for bf16.
        // if arch.get_version() >= 80 {
        //     device_props.register_feature(Feature::Type(Elem::AtomicFloat(FloatKind::BF16)));
        // }

        if arch_version >= 89 {
            device_props.register_type_usage(
                ElemType::Float(FloatKind::E4M3),
                TypeUsage::Conversion | TypeUsage::Buffer,
            );
            device_props.register_type_usage(
                ElemType::Float(FloatKind::E5M2),
                TypeUsage::Conversion | TypeUsage::Buffer,
            );
        }
        if arch_version >= 90 {
            device_props.features.tma.insert(Tma::Base);
            device_props.register_semantic_type(SemanticType::TensorMap);
            device_props.features.cube_cluster = true;
            comp_opts.supports_features.clusters = true;
            comp_opts.supports_features.elect_sync = true;
            device_props
                .features
                .matmul
                .stmatrix
                .insert(ElemType::Float(FloatKind::F16).into());
            device_props
                .features
                .matmul
                .stmatrix
                .insert(ElemType::Float(FloatKind::BF16).into());
            device_props.register_atomic_type_usage(
                Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F32))).with_vector_size(2),
                AtomicUsage::LoadStore | AtomicUsage::Add,
            );
            device_props.register_atomic_type_usage(
                Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F32))).with_vector_size(4),
                AtomicUsage::LoadStore | AtomicUsage::Add,
            );
        }

        if arch_version >= 100 {
            device_props.features.tma.insert(Tma::Im2colWide);
            // Breaks swizzle so disable for now and fix in a PR specifically for this
            // if CUDA_VERSION >= 12090 {
            //     device_props.hardware.load_width = 256;
            // }
        }

        // NOTE: FP6/FP4 is explicitly not marked as forward compatible, but is compatible within a
        // major version. Try to keep this up to date with new arch major revisions if they also
        // implement it.
        if arch_major == 10 || arch_major == 11 || arch_major == 12 {
            device_props
                .register_type_usage(ElemType::Float(FloatKind::E2M1), TypeUsage::Conversion);
            device_props.register_type_usage(
                StorageType::Packed(ElemType::Float(FloatKind::E2M1), 2),
                TypeUsage::Conversion | TypeUsage::Buffer,
            );
            device_props.register_type_usage(
                ElemType::Float(FloatKind::E2M3),
                TypeUsage::Conversion | TypeUsage::Buffer,
            );
            device_props.register_type_usage(
                ElemType::Float(FloatKind::E3M2),
                TypeUsage::Conversion | TypeUsage::Buffer,
            );
            device_props.register_type_usage(
                ElemType::Float(FloatKind::UE8M0),
                TypeUsage::Conversion | TypeUsage::Buffer,
            );

            if CUDA_VERSION >= 12080 {
                device_props.features.tma.insert(Tma::SwizzleAtomicity);
            }
        }

        device_props.features.memory_reinterpret = true;
        device_props.features.alignment = true;
        device_props.features.plane.insert(Plane::Ops);
        device_props
            .features
            .plane
            .insert(Plane::NonUniformControlFlow);

        register_wmma_features(supported_wmma_combinations, &mut device_props);
        register_mma_features(supported_mma_combinations, &mut device_props);
        register_scaled_mma_features(supported_scaled_mma_combinations, &mut device_props);

        let cuda_ctx = CudaContext::new(comp_opts, device_props.clone(), ctx, arch);
        let logger = Arc::new(ServerLogger::default());
        let policy = PitchedMemoryLayoutPolicy::new(device_props.memory.alignment as usize);
        let utilities = ServerUtilities::new(device_props, logger, (), policy);

        let memory_config =
            memory_config_from_env(mem_properties.max_page_size, mem_properties.alignment);
        CudaServer::new(
            cuda_ctx,
            mem_properties,
            memory_config,
            mem_alignment,
            device_id,
            utilities,
        )
    }

    fn utilities(&self) -> ServerUtilitiesHandle {
        self.utilities() as ServerUtilitiesHandle
    }
}

pub type CudaCompiler = CppCompiler<CudaDialect<WmmaCompiler>>;
pub type CudaComputeKernel = ComputeKernel<CudaDialect<WmmaCompiler>>;

fn tensor_cores_per_sm(version: u32) -> Option<u32> {
    match version {
        70 | 75 => Some(8),                           // Volta, Turing
        80 | 86 | 89 | 90 | 91 | 92 | 100 => Some(4), // Ampere, Hopper, Blackwell
        _ => None,                                    // Unknown or unsupported architecture
    }
}

impl Runtime for CudaRuntime {
    type Compiler = CudaCompiler;
    type Server = CudaServer;
    type Device = CudaDevice;

    fn client(device: &Self::Device) -> ComputeClient<Self> {
        ComputeClient::load(device)
    }

    fn name(_client: &ComputeClient<Self>) -> &'static str {
        "cuda"
    }

    fn require_array_lengths() -> bool {
        true
    }

    fn max_cube_count() -> (u32, u32, u32) {
        (i32::MAX as u32, u16::MAX as u32, u16::MAX as u32)
    }

    fn can_read_tensor(shape: &Shape, strides: &Strides) -> bool {
        has_pitched_row_major_strides(shape, strides)
    }

    fn target_properties() -> TargetProperties {
        TargetProperties {
            mma: MmaProperties {
                register_size_bits: 32,
                const_plane_size: 32,
                register_layout_a: MatrixLayout::RowMajor,
                register_layout_b: MatrixLayout::ColMajor,
                register_layout_acc: MatrixLayout::RowMajor,
                register_duplication_a: 1,
                register_duplication_b: 1,
                register_duplication_acc: 1,
                contiguous_elements: ContiguousElements::new(contiguous_elements_cuda),
            },
        }
    }

    fn enumerate_devices(
        _: u16,
        _: &<Self::Server as cubecl_core::server::ComputeServer>::Info,
    ) -> Vec<cubecl_core::device::DeviceId> {
        let count = cudarc::driver::CudaContext::device_count().unwrap_or(0) as usize;
        (0..count)
            .map(|i| DeviceId {
                type_id: 0,
                index_id: i as u16,
            })
            .collect()
    }
}
