//! envd-init's stdout and stderr, each owned by its own writer thread so that a reader who stops
//! reading (a stalled log driver, a paused terminal, a full pipe) can never stop PID 1, nor the
//! other stream: writes are queued up to [`MAX_QUEUED`] bytes per stream and what does not fit
//! is dropped and counted, then reported on the same stream once it drains.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;

/// Bytes per stream waiting for a slow reader before further output is dropped: with the
/// kernel's 64 KiB pipe buffer, a burst of a few hundred KiB survives a reader's pause, and
/// envd-init's memory stays flat however long the pause.
pub const MAX_QUEUED: usize = 256 * 1024;

/// envd-init's standard output or standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fd {
    /// File descriptor 1.
    Stdout = 0,
    /// File descriptor 2.
    Stderr = 1,
}

struct Console {
    queue: SyncSender<(Fd, Vec<u8>)>,
    queued: AtomicUsize,
    dropped: AtomicU64,
}

static CONSOLES: [OnceLock<Option<Console>>; 2] = [OnceLock::new(), OnceLock::new()];
static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

fn slot(fd: Fd) -> &'static OnceLock<Option<Console>> {
    &CONSOLES[fd as usize]
}

fn console(fd: Fd) -> Option<&'static Console> {
    slot(fd)
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<(Fd, Vec<u8>)>(4096);
            let spawned = std::thread::Builder::new()
                .name(format!("{fd:?}").to_lowercase())
                .spawn(move || {
                    while let Ok((fd, bytes)) = rx.recv() {
                        write_blocking(fd, &bytes);
                        if let Some(c) = slot(fd).get().and_then(Option::as_ref) {
                            c.queued.fetch_sub(bytes.len(), Ordering::SeqCst);
                            report_dropped(c, fd);
                        }
                    }
                });
            spawned.ok().map(|_| Console {
                queue: tx,
                queued: AtomicUsize::new(0),
                dropped: AtomicU64::new(0),
            })
        })
        .as_ref()
}

fn write_blocking(fd: Fd, bytes: &[u8]) {
    let _ = match fd {
        Fd::Stdout => std::io::stdout().lock().write_all(bytes),
        Fd::Stderr => std::io::stderr().lock().write_all(bytes),
    };
}

fn report_dropped(c: &Console, fd: Fd) {
    let n = c.dropped.swap(0, Ordering::SeqCst);
    if n > 0 {
        let line = format!(
            "envd-init: warn: {n} bytes of output dropped: the reader of this stream was not reading\n"
        );
        write_blocking(fd, line.as_bytes());
    }
}

/// Queues `bytes` for `fd` without blocking; false (and counted) when the queue is full.
pub fn write(fd: Fd, bytes: &[u8]) -> bool {
    let Some(c) = console(fd) else {
        write_blocking(fd, bytes);
        return true;
    };
    let fits = c
        .queued
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
            (q + bytes.len() <= MAX_QUEUED).then_some(q + bytes.len())
        })
        .is_ok();
    if fits && c.queue.try_send((fd, bytes.to_vec())).is_ok() {
        return true;
    }
    if fits {
        c.queued.fetch_sub(bytes.len(), Ordering::SeqCst);
    }
    c.dropped.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    DROPPED_TOTAL.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    false
}

/// Bytes dropped since start because a reader did not keep up.
pub fn dropped_total() -> u64 {
    DROPPED_TOTAL.load(Ordering::SeqCst)
}

/// Waits up to `timeout` for queued output to be written (before envd-init exits).
pub fn drain(timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    for c in CONSOLES
        .iter()
        .filter_map(|s| s.get().and_then(Option::as_ref))
    {
        while c.queued.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}
