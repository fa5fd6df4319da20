//! `repdiff`: RepDiff's command-line tool.

mod cli;

use clap::Parser;

/// Keeps large freed blocks in the heap instead of returning them to the OS. Model activations are tens of
/// MB each and are allocated and freed every layer; with glibc's defaults each one was a fresh mmap whose
/// pages the kernel zeroed again, 20% of a DiT-S/2 forward pass.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called once at start-up before any threads exist.
    unsafe {
        // Serve every size from the heap (glibc caps M_MMAP_THRESHOLD at 32 MiB; activations are bigger)...
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // ...and keep up to 1 GiB of freed memory for reuse instead of trimming it.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let args = cli::Cli::parse();
    match cli::run(args) {
        // Stopped early by Ctrl-C or SIGTERM, after saving what it did.
        Ok(()) if cli::interrupted() => std::process::ExitCode::from(130),
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if cli::interrupted() { std::process::ExitCode::from(130) } else { std::process::ExitCode::FAILURE }
        }
    }
}
