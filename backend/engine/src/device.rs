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
            Ok(device) => return (device, format!("CUDA GPU {ordinal}")),
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
