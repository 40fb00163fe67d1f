//! Pseudo-terminals for interactive sessions.
//!
//! Opened with nix rather than portable-pty: both ends get `O_CLOEXEC` (so one session's child
//! never holds another session's terminal open), the child's `pre_exec` only makes
//! async-signal-safe calls (`setsid`, `TIOCSCTTY`), and the master is read and written
//! asynchronously through tokio's `AsyncFd` instead of blocking threads.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{openpty, Winsize};
use nix::sys::termios::{self, SetArg, Termios};
use russh::Pty;
use tokio::io::unix::AsyncFd;

/// The two ends of a new pseudo-terminal.
pub struct PtyPair {
    /// The master, read and written by the server.
    pub master: OwnedFd,
    /// The slave, the child's stdin/stdout/stderr and controlling terminal.
    pub slave: OwnedFd,
    /// The slave's path (for `SSH_TTY`).
    pub slave_path: String,
}

/// Opens a PTY of the client's size with the client's terminal modes applied.
pub fn open(cols: u32, rows: u32, modes: &[(Pty, u32)]) -> std::io::Result<PtyPair> {
    let size = winsize(cols, rows);
    let pair = openpty(Some(&size), None)?;
    for fd in [&pair.master, &pair.slave] {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    let slave_path = nix::unistd::ttyname(pair.slave.as_fd())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Ok(mut t) = termios::tcgetattr(pair.slave.as_fd()) {
        apply_modes(&mut t, modes);
        let _ = termios::tcsetattr(pair.slave.as_fd(), SetArg::TCSANOW, &t);
    }
    Ok(PtyPair {
        master: pair.master,
        slave: pair.slave,
        slave_path,
    })
}

fn winsize(cols: u32, rows: u32) -> Winsize {
    Winsize {
        ws_row: rows.min(u16::MAX as u32) as u16,
        ws_col: cols.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets the window size; the kernel then sends SIGWINCH to the foreground process group.
pub fn resize(master: &impl AsRawFd, cols: u32, rows: u32) {
    nix::ioctl_write_ptr_bad!(tiocswinsz, nix::libc::TIOCSWINSZ, Winsize);
    let size = winsize(cols, rows);
    // SAFETY: TIOCSWINSZ reads one Winsize from the pointer, which lives for the call.
    let _ = unsafe { tiocswinsz(master.as_raw_fd(), &size) };
}

/// Applies the RFC 4254 terminal modes OpenSSH sends (IUTF8 among them).
fn apply_modes(t: &mut Termios, modes: &[(Pty, u32)]) {
    use termios::{
        InputFlags as I, LocalFlags as L, OutputFlags as O, SpecialCharacterIndices as C,
    };
    for &(mode, value) in modes {
        let on = value != 0;
        let cc = |t: &mut Termios, idx: C| t.control_chars[idx as usize] = value as u8;
        match mode {
            Pty::VINTR => cc(t, C::VINTR),
            Pty::VQUIT => cc(t, C::VQUIT),
            Pty::VERASE => cc(t, C::VERASE),
            Pty::VKILL => cc(t, C::VKILL),
            Pty::VEOF => cc(t, C::VEOF),
            Pty::VSTART => cc(t, C::VSTART),
            Pty::VSTOP => cc(t, C::VSTOP),
            Pty::VSUSP => cc(t, C::VSUSP),
            Pty::VWERASE => cc(t, C::VWERASE),
            Pty::VLNEXT => cc(t, C::VLNEXT),
            Pty::VREPRINT => cc(t, C::VREPRINT),
            Pty::VDISCARD => cc(t, C::VDISCARD),
            Pty::IGNPAR => t.input_flags.set(I::IGNPAR, on),
            Pty::PARMRK => t.input_flags.set(I::PARMRK, on),
            Pty::INPCK => t.input_flags.set(I::INPCK, on),
            Pty::ISTRIP => t.input_flags.set(I::ISTRIP, on),
            Pty::INLCR => t.input_flags.set(I::INLCR, on),
            Pty::IGNCR => t.input_flags.set(I::IGNCR, on),
            Pty::ICRNL => t.input_flags.set(I::ICRNL, on),
            Pty::IXON => t.input_flags.set(I::IXON, on),
            Pty::IXANY => t.input_flags.set(I::IXANY, on),
            Pty::IXOFF => t.input_flags.set(I::IXOFF, on),
            Pty::IMAXBEL => t.input_flags.set(I::IMAXBEL, on),
            Pty::IUTF8 => t.input_flags.set(I::IUTF8, on),
            Pty::ISIG => t.local_flags.set(L::ISIG, on),
            Pty::ICANON => t.local_flags.set(L::ICANON, on),
            Pty::ECHO => t.local_flags.set(L::ECHO, on),
            Pty::ECHOE => t.local_flags.set(L::ECHOE, on),
            Pty::ECHOK => t.local_flags.set(L::ECHOK, on),
            Pty::ECHONL => t.local_flags.set(L::ECHONL, on),
            Pty::NOFLSH => t.local_flags.set(L::NOFLSH, on),
            Pty::TOSTOP => t.local_flags.set(L::TOSTOP, on),
            Pty::IEXTEN => t.local_flags.set(L::IEXTEN, on),
            Pty::ECHOCTL => t.local_flags.set(L::ECHOCTL, on),
            Pty::ECHOKE => t.local_flags.set(L::ECHOKE, on),
            Pty::PENDIN => t.local_flags.set(L::PENDIN, on),
            Pty::OPOST => t.output_flags.set(O::OPOST, on),
            Pty::ONLCR => t.output_flags.set(O::ONLCR, on),
            Pty::OCRNL => t.output_flags.set(O::OCRNL, on),
            Pty::ONOCR => t.output_flags.set(O::ONOCR, on),
            Pty::ONLRET => t.output_flags.set(O::ONLRET, on),
            _ => {}
        }
    }
}

/// The master side as an async reader/writer.
pub struct Master(AsyncFd<OwnedFd>);

impl Master {
    /// Wraps the master fd (switching it to non-blocking mode).
    pub fn new(fd: OwnedFd) -> std::io::Result<Master> {
        let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: the fd is owned by the AsyncFd from here on and closed only when it drops.
        let registered = unsafe { AsyncFd::register(fd) };
        Ok(Master(registered.map_err(std::io::Error::from)?))
    }

    /// The raw fd, for resizing.
    pub fn raw(&self) -> &OwnedFd {
        self.0.get_ref()
    }

    /// Reads output; `Ok(0)` at the end (EIO once every slave fd is closed).
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), buf).map_err(Into::into)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` (the user's keystrokes).
    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(Into::into)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}
