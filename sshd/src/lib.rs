//! # envd-sshd
//!
//! The SSH server of an envd environment, on `russh`: public-key auth only, PTY shells and
//! exec sessions, agent forwarding (also for non-PTY exec, which VS Code needs), local, dynamic,
//! remote and unix-socket forwarding, the sftp subsystem and a persistent host key.
//!
//! - [`admission`]: the login queue, the grace deadline and refusals with a reason;
//! - [`keys`]: the host key (created once, mode 0600, then reused) and authorized keys;
//! - [`server`]: the russh handler: authentication, channel opens, global requests, limits;
//! - [`session`]: one session channel: environment, shell/exec/subsystem, I/O, exit status;
//! - [`pty`]: pseudo-terminals (controlling terminal, modes, window size);
//! - [`agent`]: the forwarded agent's private socket;
//! - [`forward`]: TCP and unix-socket forwarding both ways;
//! - [`sftp`]: the sftp subsystem over the real filesystem.

#![warn(missing_docs)]

pub mod admission;
pub mod agent;
pub mod forward;
pub mod keys;
pub mod pty;
pub mod server;
pub mod session;
pub mod sftp;
