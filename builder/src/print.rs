//! Writing to stdout the way command-line tools do: `envd ls | head` ends quietly with the
//! status a shell expects (141, as if killed by SIGPIPE). SIGPIPE itself stays ignored (a peer
//! closing a socket must be an error, not death: Docker's port proxy does that while a container
//! starts), so a closed stdout is recognised by its error kind, here and in [`is_broken_pipe`].

use std::io::Write;

/// The exit status of a command whose reader went away.
pub const BROKEN_PIPE_STATUS: i32 = 141;

/// Writes formatted text to stdout; a closed stdout ends the process with
/// [`BROKEN_PIPE_STATUS`], any other failure with 1 and a message.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        eprintln!("envd: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Whether an error comes from writing to a reader that went away.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` for envd's output (see the module).
#[macro_export]
macro_rules! say {
    () => { $crate::print::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::print::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for envd's output (see the module).
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => { $crate::print::write_stdout(format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipes_are_found_in_the_chain() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let e = anyhow::Error::from(pipe).context("writing the log");
        assert!(is_broken_pipe(&e));
        let other = anyhow::Error::from(std::io::Error::other("disk full")).context("x");
        assert!(!is_broken_pipe(&other));
    }
}
