//! The host user's envd files: the configuration directory (named builders, SSH entries, pinned
//! host keys) and the key pair environments trust. Everything on the host side that writes a
//! file the user keeps goes through `write_file`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey};

/// envd's configuration directory: `$ENVD_CONFIG_DIR`, else `$XDG_CONFIG_HOME/envd`, else
/// `~/.config/envd`.
pub fn config_dir() -> PathBuf {
    envd_dir("ENVD_CONFIG_DIR", "XDG_CONFIG_HOME", ".config")
}

/// envd's cache directory (derived data only, safe to delete): `$ENVD_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/envd`, else `~/.cache/envd`.
pub fn cache_dir() -> PathBuf {
    envd_dir("ENVD_CACHE_DIR", "XDG_CACHE_HOME", ".cache")
}

/// `$own`, else `$xdg/envd`, else `~/home_relative/envd`.
fn envd_dir(own: &str, xdg: &str, home_relative: &str) -> PathBuf {
    if let Some(d) = std::env::var_os(own) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os(xdg) {
        return PathBuf::from(d).join("envd");
    }
    home_dir().join(home_relative).join("envd")
}

/// `$HOME`, else the passwd entry's home directory.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(passwd_home)
}

/// The home directory OpenSSH uses for `~/.ssh/config`: the passwd entry's, not `$HOME`.
pub(crate) fn passwd_home() -> PathBuf {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// The user's key pair for environments.
pub fn key_path() -> PathBuf {
    config_dir().join("id_ed25519")
}

/// Returns the public key (OpenSSH one-line form), creating the key pair (ed25519, private part
/// mode 0600) the first time.
pub fn ensure_user_key() -> anyhow::Result<String> {
    let path = key_path();
    let public = path.with_extension("pub");
    if path.exists() {
        if let Ok(text) = std::fs::read_to_string(&public) {
            return Ok(text.trim().to_string());
        }
        let key = PrivateKey::read_openssh_file(&path)
            .with_context(|| format!("cannot read the envd key {}", path.display()))?;
        let text = key.public_key().to_openssh()?;
        std::fs::write(&public, format!("{text}\n"))?;
        return Ok(text);
    }
    let mut seed = [0u8; 32];
    crate::random::fill(&mut seed)?;
    let mut key = PrivateKey::try_from(KeypairData::from(Ed25519Keypair::from_seed(&seed)))
        .context("cannot make a key pair")?;
    key.set_comment("envd");
    let dir = path.parent().context("key path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_file(&path, key.to_openssh(LineEnding::LF)?.as_bytes(), 0o600)?;
    let text = key.public_key().to_openssh()?;
    write_file(&public, format!("{text}\n").as_bytes(), 0o644)?;
    Ok(text)
}

/// The file a write to `path` must change: a symlinked `~/.ssh/config` (dotfiles managers do
/// this) stays a link and its target gets the new text.
fn through_links(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(target) => {
                p = match p.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                }
            }
            Err(_) => break,
        }
    }
    p
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half a
/// file.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let path = &through_links(path);
    let tmp = path.with_extension("envd-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_pair_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("ENVD_CONFIG_DIR", dir.path());
        let a = ensure_user_key().unwrap();
        let b = ensure_user_key().unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("ssh-ed25519 "), "{a}");
        let mode = std::fs::metadata(key_path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        std::env::remove_var("ENVD_CONFIG_DIR");
    }
}
