//! Ctrl-C (SIGINT) and SIGTERM cancel a running command through its [`CancelToken`]: training stops before
//! its next step and saves a checkpoint, so `--resume` loses nothing; the process then exits with 130. A
//! second signal kills at once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use repdiff_engine::train::CancelToken;

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store and _exit: both async-signal-safe.
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        unsafe { libc::_exit(130) };
    }
}

/// A token that is cancelled when the process receives SIGINT or SIGTERM: the same one for every caller
/// (the handler and its watcher are installed once), so a signal cancels all that runs in this process,
/// and a command started after it stops at once.
pub fn cancel_on_signal() -> CancelToken {
    static TOKEN: OnceLock<CancelToken> = OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let token = CancelToken::default();
            #[cfg(unix)]
            {
                // SAFETY: installs a handler that only touches an atomic and calls _exit.
                unsafe {
                    libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
                    libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
                }
                let watched = token.clone();
                std::thread::spawn(move || {
                    while SIGNALS.load(Ordering::SeqCst) == 0 {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    eprintln!(
                        "\nInterrupted: finishing the current step and saving a checkpoint (press Ctrl-C again to kill)"
                    );
                    watched.cancel();
                });
            }
            token
        })
        .clone()
}

/// Whether SIGINT or SIGTERM arrived since [`cancel_on_signal`]: a command that stopped early for it
/// still saves what it did, and the process exits with 130 (as shells report an interrupted command), so
/// `repdiff train && repdiff sample` does not go on with a half-trained model.
pub fn interrupted() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

/// Records that the command was stopped by a signal it handled itself (an async command waits for the
/// signal with tokio), so the process exits with 130 as for [`cancel_on_signal`]'s.
pub fn mark_interrupted() {
    SIGNALS.fetch_max(1, Ordering::SeqCst);
}
