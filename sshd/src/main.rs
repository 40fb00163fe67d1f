//! # envd-sshd
//!
//! The SSH server of an envd environment: public-key auth, PTY shells, exec, agent forwarding,
//! port and unix-socket forwarding, sftp and a persistent host key.
//!
//! **Status: not implemented yet (issue 4).** This binary exists so the static-runtime build,
//! its test and the image layout are in place; it parses envd-sshd's interface and refuses to
//! run rather than pretend to serve SSH.

use clap::Parser;

/// envd-sshd: the SSH server of an envd environment.
#[derive(Parser)]
#[command(name = "envd-sshd", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:2222")]
    listen: String,
    /// Authorized public keys.
    #[arg(long, default_value = "/var/envd/authorized_keys")]
    authorized_keys: String,
    /// Host key (created with mode 0600 when missing).
    #[arg(long, default_value = "/var/envd/ssh_host_ed25519_key")]
    host_key: String,
    /// Login shell (default: the user's).
    #[arg(long)]
    shell: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "envd-sshd: the SSH server is not implemented yet (would listen on {}); see issue 4",
        cli.listen
    );
    std::process::ExitCode::from(2)
}
