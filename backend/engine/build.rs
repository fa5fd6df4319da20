//! With `--features cuda`, compiles the kernels of cuda/*.cu to PTX with nvcc into OUT_DIR (src/ops/cuda.rs
//! includes them). `NVCC` names the compiler (default: `nvcc` on the PATH, else under `CUDA_PATH` or
//! /usr/local/cuda); `CUDA_COMPUTE_CAP` the virtual architecture (default 80: PTX that Ampere, Hopper and
//! later GPUs compile at load; the bf16 tensor-core products need 80 or more), as candle's own kernels read it.
//! Without the feature nothing is compiled and no CUDA toolkit is needed.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 4] = ["rows", "columns", "attention", "optim"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=cuda");
    for var in ["NVCC", "CUDA_PATH", "CUDA_COMPUTE_CAP", "NVCC_CCBIN"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let cap: u32 = std::env::var("CUDA_COMPUTE_CAP").ok().and_then(|c| c.trim().parse().ok()).unwrap_or(80);
    assert!(
        cap >= 80,
        "CUDA_COMPUTE_CAP={cap}: the kernels' bf16 tensor-core products need compute capability 8.0 or later"
    );
    for name in KERNELS {
        let mut command = Command::new(&nvcc);
        command.args(["--ptx", &format!("-arch=compute_{cap}"), "-O3", "-std=c++17", "-Icuda", "-o"]);
        command.arg(out.join(format!("{name}.ptx"))).arg(format!("cuda/{name}.cu"));
        if let Ok(ccbin) = std::env::var("NVCC_CCBIN") {
            command.args(["-ccbin", &ccbin]);
        }
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e} (set NVCC to the CUDA compiler)", nvcc.display()));
        assert!(status.success(), "{} failed on cuda/{name}.cu ({status})", nvcc.display());
    }
}

fn nvcc() -> PathBuf {
    if let Some(nvcc) = std::env::var_os("NVCC") {
        return nvcc.into();
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|dir| dir.join("nvcc")).find(|c| c.is_file()))
        .unwrap_or_default();
    let roots = [std::env::var_os("CUDA_PATH").map(PathBuf::from), Some(PathBuf::from("/usr/local/cuda"))];
    on_path
        .or_else(|| roots.into_iter().flatten().map(|root| root.join("bin/nvcc")).find(|c| c.is_file()))
        .unwrap_or_else(|| PathBuf::from("nvcc"))
}
