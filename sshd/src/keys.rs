//! Host and client keys.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};

/// Loads the host key, creating an ed25519 key (mode 0600) when the file does not exist, so the
/// key and the client's pinned known_hosts entry survive restarts.
pub fn load_or_create_host_key(path: &Path) -> anyhow::Result<PrivateKey> {
    if path.exists() {
        check_private(path)?;
        return russh::keys::load_secret_key(path, None)
            .with_context(|| format!("cannot load the host key {}", path.display()));
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| anyhow::anyhow!("cannot get random bytes for the host key: {e}"))?;
    let key = PrivateKey::try_from(KeypairData::from(Ed25519Keypair::from_seed(&seed)))
        .context("cannot build the host key")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = key
        .to_openssh(LineEnding::LF)
        .context("cannot encode the host key")?;
    write_private(path, text.as_bytes())?;
    let public = key
        .public_key()
        .to_openssh()
        .context("cannot encode the public key")?;
    let _ = std::fs::write(path.with_extension("pub"), format!("{public}\n"));
    Ok(key)
}

/// Refuses a host key others can read, as OpenSSH does ("UNPROTECTED PRIVATE KEY FILE").
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the host key {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the host key {} is accessible by others (mode {:o}); chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the host key {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// What an authorized_keys line's options take away (OpenSSH's `restrict` and `no-*` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restrictions {
    /// `no-pty`: no terminal.
    pub no_pty: bool,
    /// `no-agent-forwarding`.
    pub no_agent_forwarding: bool,
    /// `no-port-forwarding`: no `-L`, `-D`, `-R` (TCP or unix socket).
    pub no_port_forwarding: bool,
}

/// One usable line of an authorized_keys file.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    /// The key.
    pub key: PublicKey,
    /// What its options take away.
    pub restrictions: Restrictions,
}

/// A line that is not used, and why (logged; the other lines still work).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// Why it is not used.
    pub reason: String,
}

/// RSA keys shorter than this are refused, as OpenSSH 9 does (`RequiredRSASize`).
pub const MIN_RSA_BITS: u32 = 2048;

/// Reads an `authorized_keys` file, refusing it as OpenSSH's `StrictModes` does when someone
/// other than its owner (us or root) could write it. Lines that cannot be used are logged and
/// skipped; one bad line never disables the others.
pub fn read_authorized_keys(path: &Path) -> anyhow::Result<Vec<AuthorizedKey>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    check_not_writable_by_others(path, &file.metadata()?)?;
    let mut text = String::new();
    std::io::BufReader::new(file)
        .take(1 << 20)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (keys, skipped) = parse_authorized_keys(&text);
    for s in skipped {
        tracing::warn!("{}:{}: {}; line not used", path.display(), s.line, s.reason);
    }
    Ok(keys)
}

fn check_not_writable_by_others(path: &Path, meta: &std::fs::Metadata) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "{} belongs to uid {}, not to us or root; refused",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "{} is writable by group or others (mode {:o}); refused",
            path.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// Parses the text of an `authorized_keys` file line by line.
pub fn parse_authorized_keys(text: &str) -> (Vec<AuthorizedKey>, Vec<SkippedLine>) {
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(k) => keys.push(k),
            Err(reason) => skipped.push(SkippedLine {
                line: n + 1,
                reason,
            }),
        }
    }
    (keys, skipped)
}

fn parse_line(line: &str) -> Result<AuthorizedKey, String> {
    let (options, key_text) = if starts_with_key_type(line) {
        ("", line)
    } else {
        split_options(line)
    };
    let restrictions = parse_options(options)?;
    let key = PublicKey::from_openssh(key_text).map_err(|e| format!("not a public key: {e}"))?;
    if let Some(rsa) = key.key_data().rsa() {
        let bits = rsa.key_size();
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "RSA key of {bits} bits (at least {MIN_RSA_BITS} needed)"
            ));
        }
    }
    Ok(AuthorizedKey { key, restrictions })
}

fn starts_with_key_type(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or("");
    ["ssh-", "ecdsa-", "sk-", "rsa-"]
        .iter()
        .any(|p| first.starts_with(p))
}

/// Splits `opt1,opt2="a b" ssh-ed25519 AAAA...` at the first blank outside double quotes.
fn split_options(line: &str) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return (&line[..i], line[i..].trim_start()),
            _ => {}
        }
    }
    (line, "")
}

/// The options envd-sshd honours; any other option makes the line unusable, so a key is never
/// accepted with fewer restrictions than its line asks for (`from=`, `command=`,
/// `cert-authority`, `permitopen=` ...).
fn parse_options(options: &str) -> Result<Restrictions, String> {
    let mut r = Restrictions::default();
    if options.is_empty() {
        return Ok(r);
    }
    for opt in options.split(',') {
        match opt.to_ascii_lowercase().as_str() {
            "restrict" => {
                r = Restrictions {
                    no_pty: true,
                    no_agent_forwarding: true,
                    no_port_forwarding: true,
                }
            }
            "no-pty" => r.no_pty = true,
            "pty" => r.no_pty = false,
            "no-agent-forwarding" => r.no_agent_forwarding = true,
            "agent-forwarding" => r.no_agent_forwarding = false,
            "no-port-forwarding" => r.no_port_forwarding = true,
            "port-forwarding" => r.no_port_forwarding = false,
            // No X11 and no ~/.ssh/rc in envd-sshd: these restrict nothing more.
            "no-x11-forwarding" | "no-user-rc" | "x11-forwarding" | "user-rc" => {}
            other => {
                let name = other.split('=').next().unwrap_or(other);
                return Err(format!("option {name:?} is not supported"));
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/host_key");
        let a = load_or_create_host_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create_host_key(&path).unwrap();
        assert_eq!(
            a.public_key(),
            b.public_key(),
            "the key must survive a restart"
        );
    }

    #[test]
    fn authorized_keys_parse() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_host_key(&dir.path().join("k")).unwrap();
        let line = key.public_key().to_openssh().unwrap();
        let text = format!("# comment\n\n{line} user@host\n");
        assert_eq!(parse_authorized_keys(&text).0.len(), 1);
        let (keys, skipped) = parse_authorized_keys("garbage here\n");
        assert!(keys.is_empty());
        assert_eq!(skipped[0].line, 1);
    }

    fn sample_key(dir: &Path, name: &str) -> String {
        let key = load_or_create_host_key(&dir.join(name)).unwrap();
        key.public_key().to_openssh().unwrap()
    }

    #[test]
    fn one_bad_line_never_disables_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            sample_key(dir.path(), "a"),
            sample_key(dir.path(), "b"),
            sample_key(dir.path(), "c"),
        );
        let text = format!(
            "ssh-ed25519 AAAA!!notbase64 broken\n\
             cert-authority {a}\n\
             from=\"10.0.0.1\",no-pty {a}\n\
             command=\"echo hi, there\" {a}\n\
             restrict,pty {b} two\n\
             no-agent-forwarding,no-port-forwarding {c}\n\
             {a} plain\n"
        );
        let (keys, skipped) = parse_authorized_keys(&text);
        let lines: Vec<usize> = skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [1, 2, 3, 4], "{skipped:?}");
        assert!(skipped[1].reason.contains("cert-authority"), "{skipped:?}");
        assert!(skipped[2].reason.contains("from"), "{skipped:?}");
        assert!(skipped[3].reason.contains("command"), "{skipped:?}");
        assert_eq!(keys.len(), 3);
        let r = |i: usize| keys[i].restrictions;
        assert_eq!(
            r(0),
            Restrictions {
                no_pty: false,
                no_agent_forwarding: true,
                no_port_forwarding: true
            }
        );
        assert_eq!(
            r(1),
            Restrictions {
                no_pty: false,
                no_agent_forwarding: true,
                no_port_forwarding: true
            }
        );
        assert_eq!(r(2), Restrictions::default());
    }

    #[test]
    fn group_writable_authorized_keys_and_open_host_keys_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ak = dir.path().join("authorized_keys");
        std::fs::write(&ak, sample_key(dir.path(), "k")).unwrap();
        std::fs::set_permissions(&ak, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_authorized_keys(&ak).unwrap().len(), 1);
        std::fs::set_permissions(&ak, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = read_authorized_keys(&ak).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        let hk = dir.path().join("k");
        std::fs::set_permissions(&hk, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_host_key(&hk).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
