//! Child processes that must not outlive the process that started them.

use std::process::Command;

/// Makes `command`'s process receive SIGKILL when the thread that starts it ends (Linux; elsewhere
/// nothing). A server killed outright then leaves no worker process running on, holding the cores and
/// the jobs that the next server's worker needs. The thread that spawns the child
/// must be the one that waits for it, as a thread's exit counts as the parent's death.
pub fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}
