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
        return russh::keys::load_secret_key(path, None)
            .with_context(|| format!("cannot load the host key {}", path.display()));
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("cannot read /dev/urandom")?;
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

/// Reads an `authorized_keys` file. Lines with options (`from=...`, `command=...`) are refused
/// rather than honoured half-way; comments and blank lines are skipped.
pub fn read_authorized_keys(path: &Path) -> anyhow::Result<Vec<PublicKey>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_authorized_keys(&text)
}

/// Parses the text of an `authorized_keys` file.
pub fn parse_authorized_keys(text: &str) -> anyhow::Result<Vec<PublicKey>> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match PublicKey::from_openssh(line) {
            Ok(k) => keys.push(k),
            Err(e) => {
                if line
                    .split_whitespace()
                    .next()
                    .is_some_and(|w| w.contains('='))
                {
                    tracing::warn!(
                        "authorized_keys line {}: key options are not supported; line ignored",
                        n + 1
                    );
                } else {
                    bail!("authorized_keys line {}: not a public key: {e}", n + 1);
                }
            }
        }
    }
    Ok(keys)
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
        assert_eq!(parse_authorized_keys(&text).unwrap().len(), 1);
        assert!(parse_authorized_keys("garbage here\n").is_err());
    }
}
