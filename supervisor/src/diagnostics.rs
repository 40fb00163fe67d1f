//! envd-init's own log lines on stderr: `envd-init: LEVEL message`.
//!
//! A few lines of code instead of a `tracing` subscriber: the subscriber alone was about a tenth
//! of the static binary, and envd-init only ever writes short lines to one place.

use std::sync::atomic::{AtomicU8, Ordering};

/// Severity, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something is wrong but envd-init carries on.
    Warn = 1,
    /// What happened (services starting, exiting, restarting).
    Info = 2,
    /// Details for debugging.
    Debug = 3,
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most verbose level printed, from `ENVD_INIT_LOG` (error, warn, info, debug).
pub fn init_from_env() {
    let level = match std::env::var("ENVD_INIT_LOG").as_deref() {
        Ok("error") => Level::Error,
        Ok("warn") => Level::Warn,
        Ok("debug") | Ok("trace") => Level::Debug,
        _ => Level::Info,
    };
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether `level` is printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Writes one line (used by the macros).
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    let tag = match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
    };
    let line = format!("envd-init: {tag}: {args}\n");
    crate::console::write(crate::console::Fd::Stderr, line.as_bytes());
}

/// Logs at info level.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { if $crate::diagnostics::enabled($crate::diagnostics::Level::Info) { $crate::diagnostics::write($crate::diagnostics::Level::Info, format_args!($($t)*)) } } }
/// Logs at warn level.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { if $crate::diagnostics::enabled($crate::diagnostics::Level::Warn) { $crate::diagnostics::write($crate::diagnostics::Level::Warn, format_args!($($t)*)) } } }
/// Logs at error level.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { if $crate::diagnostics::enabled($crate::diagnostics::Level::Error) { $crate::diagnostics::write($crate::diagnostics::Level::Error, format_args!($($t)*)) } } }
/// Logs at debug level.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { if $crate::diagnostics::enabled($crate::diagnostics::Level::Debug) { $crate::diagnostics::write($crate::diagnostics::Level::Debug, format_args!($($t)*)) } } }
