//! PID 1 outlives its own bugs: a panic in one subsystem is logged (through the non-blocking
//! console) and contained, and the long-lived tasks PID 1's duties depend on (the reaper, signal
//! handling, the API) are started again, so reaping, serving and signal handling never stop
//! because one part of envd-init failed. The release build unwinds (no `panic = "abort"`), which
//! is what makes containment possible.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Pause before a task that panicked runs again: a task that panics at once cannot spin.
pub const RESTART_PAUSE: Duration = Duration::from_millis(100);

/// Replaces the default panic message (a blocking write to stderr) with one log line.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        let thread = std::thread::current();
        crate::error!(
            "internal error (a bug in envd-init, please report it) in thread {}: {info}",
            thread.name().unwrap_or("?")
        );
    }));
}

/// Panics seen since start.
pub fn panics() -> u64 {
    PANICS.load(Ordering::SeqCst)
}

/// Runs `step`; a panic inside it is logged by the hook and ends only this step (None).
pub fn contain<T>(what: &str, step: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(step)) {
        Ok(v) => Some(v),
        Err(_) => {
            crate::error!("{what} failed with an internal error; envd-init carries on");
            None
        }
    }
}

/// Spawns the task `make` builds, and builds and spawns it again each time it panics. It ends
/// when the task returns normally.
pub fn spawn_restarting<F, Fut>(name: &'static str, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Err(e) if e.is_panic() => {
                    crate::error!("{name} stopped with an internal error; starting it again");
                    tokio::time::sleep(RESTART_PAUSE).await;
                }
                _ => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    #[test]
    fn a_contained_panic_ends_only_that_step() {
        assert_eq!(contain("test step", || 7), Some(7));
        let r: Option<()> = contain("test step", || panic!("boom"));
        assert_eq!(r, None);
    }

    #[tokio::test]
    async fn a_task_that_panics_is_started_again_until_it_ends_normally() {
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let task = spawn_restarting("test task", move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("restarted in time")
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
