//! Compiles the engine's kernels (../cuda/*.cu) as host C++ against ../cuda/emulate.h.

fn main() {
    println!("cargo::rerun-if-changed=../cuda");
    println!("cargo::rerun-if-changed=src/launch.cpp");
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .file("src/launch.cpp")
        .include("../cuda")
        .define("REPDIFF_EMULATE", None)
        .opt_level(2)
        .warnings(true)
        .extra_warnings(false)
        .flag_if_supported("-Wno-unused-parameter")
        .compile("repdiff_kernel_emulator");
}
