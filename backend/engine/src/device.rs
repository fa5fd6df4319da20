//! Device choice: CUDA when this build has it and a GPU answers, else the CPU. `REPDIFF_DEVICE=cpu`
//! keeps a CUDA build on the CPU (to compare the two, or to leave a busy GPU alone); `cuda:N` picks GPU N.

use candle_core::Device;

/// The best available device and a sentence saying which it is and why.
pub fn best_device() -> (Device, String) {
    let wanted = std::env::var("REPDIFF_DEVICE").unwrap_or_default();
    if wanted.eq_ignore_ascii_case("cpu") {
        return (Device::Cpu, format!("CPU ({}; REPDIFF_DEVICE=cpu)", cpu_threads()));
    }
    #[cfg(feature = "cuda")]
    {
        let ordinal = wanted.strip_prefix("cuda:").and_then(|n| n.parse().ok()).unwrap_or(0);
        match Device::new_cuda(ordinal) {
            Ok(device) => {
                let note = match &device {
                    Device::Cuda(gpu) => match gpu_memory::keep_freed(gpu) {
                        Ok(()) => String::new(),
                        Err(e) => format!("; freed memory goes back to the driver ({e})"),
                    },
                    _ => String::new(),
                };
                return (device, format!("CUDA GPU {ordinal}{note}"));
            }
            Err(e) => return (Device::Cpu, format!("CPU (CUDA is built in but GPU {ordinal} did not answer: {e})")),
        }
    }
    #[allow(unreachable_code)]
    (Device::Cpu, format!("CPU ({}; built without CUDA)", cpu_threads()))
}

/// "1 thread", "2 threads": what candle's CPU kernels use (`RAYON_NUM_THREADS`, else every core).
fn cpu_threads() -> String {
    match candle_core::utils::get_num_threads() {
        1 => "1 thread".to_string(),
        n => format!("{n} threads"),
    }
}

/// The GPU memory pool that candle's stream-ordered allocations come from.
#[cfg(feature = "cuda")]
pub mod gpu_memory {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::cuda_backend::{CudaDevice, WrapErr};

    fn pool(dev: &CudaDevice) -> candle_core::Result<sys::CUmemoryPool> {
        let context = dev.cuda_stream().context().clone();
        context.bind_to_thread().w()?;
        // SAFETY: the device handle comes from a live context.
        unsafe { result::device::get_mem_pool(context.cu_device()) }.w()
    }

    fn set(dev: &CudaDevice, attribute: sys::CUmemPool_attribute, mut value: u64) -> candle_core::Result<()> {
        // SAFETY: both attributes set here take a 64-bit value.
        unsafe { result::mem_pool::set_attribute(pool(dev)?, attribute, &mut value as *mut u64 as *mut _) }.w()
    }

    /// Keeps the memory that tensors free in the pool for the next allocations, instead of handing it back
    /// to the driver at every synchronisation (the pool's default): a caching allocator, as PyTorch's. A
    /// training step frees and reallocates gigabytes of activations; without this each one is a new mapping.
    pub fn keep_freed(dev: &CudaDevice) -> candle_core::Result<()> {
        set(dev, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX)
    }

    /// The most memory the pool has had in use at once since the last [`reset_peak`].
    pub fn peak_bytes(dev: &CudaDevice) -> candle_core::Result<u64> {
        let mut value = 0u64;
        // SAFETY: USED_MEM_HIGH is a 64-bit value.
        unsafe {
            result::mem_pool::get_attribute(
                pool(dev)?,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut value as *mut u64 as *mut _,
            )
        }
        .w()?;
        Ok(value)
    }

    /// Starts a new peak at the memory in use now.
    pub fn reset_peak(dev: &CudaDevice) -> candle_core::Result<()> {
        set(dev, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)
    }
}

/// Starts a new peak-memory measurement on `device` (a GPU's pool; nothing on the CPU).
pub fn reset_peak_memory(device: &Device) -> crate::Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(gpu) = device {
        gpu_memory::reset_peak(gpu)?;
    }
    let _ = device;
    Ok(())
}

/// The most memory `device` has had in use since [`reset_peak_memory`], in bytes: GPUs only (`None` on
/// the CPU, whose allocator keeps no such count).
pub fn peak_memory(device: &Device) -> crate::Result<Option<u64>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(gpu) = device {
        return Ok(Some(gpu_memory::peak_bytes(gpu)?));
    }
    let _ = device;
    Ok(None)
}
