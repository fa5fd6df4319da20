//! Device choice: CUDA when this build has it and a GPU answers, else the CPU.

use candle_core::Device;

/// The best available device and a sentence saying which it is and why.
pub fn best_device() -> (Device, String) {
    #[cfg(feature = "cuda")]
    {
        match Device::new_cuda(0) {
            Ok(device) => return (device, "CUDA GPU 0".to_string()),
            Err(e) => return (Device::Cpu, format!("CPU (CUDA is built in but no GPU answered: {e})")),
        }
    }
    #[allow(unreachable_code)]
    (Device::Cpu, format!("CPU ({} threads; built without CUDA)", candle_core::utils::get_num_threads()))
}
