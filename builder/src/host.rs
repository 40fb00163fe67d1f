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

/// The CA bundle this host trusts, which build steps and the running environment trust too
/// (behind a TLS-intercepting proxy the base image's bundle lacks its CA): `ENVD_HOST_CA` names
/// another file, or `none` for no bundle; else the first of Debian's, Fedora's and openSUSE's
/// paths that exists. It is mounted where needed, never copied into an image. A named file that
/// does not exist is an error, not a silent fallback (Docker would mount an empty directory).
pub fn ca_bundle() -> anyhow::Result<Option<PathBuf>> {
    match std::env::var_os("ENVD_HOST_CA") {
        Some(v) if v == "none" => Ok(None),
        Some(v) => {
            let path = PathBuf::from(v);
            if !path.is_file() {
                anyhow::bail!(
                    "ENVD_HOST_CA={}: no such file (name a CA bundle, or `none` for none)",
                    path.display()
                );
            }
            Ok(Some(path))
        }
        None => Ok([
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())),
    }
}

/// The user's key pair for environments.
pub fn key_path() -> PathBuf {
    config_dir().join("id_ed25519")
}

/// An exclusive lock on envd's configuration directory, held while a file the user keeps is read,
/// changed and written back (SSH entries, pinned keys, the key pair): two `envd up` at once must
/// not lose each other's entry or end with mismatched key halves. Released when dropped.
pub struct ConfigLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Takes [`ConfigLock`], waiting for another envd that holds it.
pub fn lock_config() -> anyhow::Result<ConfigLock> {
    let dir = config_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", path.display()))?;
    Ok(ConfigLock(lock))
}

/// Returns the public key (OpenSSH one-line form), creating the key pair (ed25519, private part
/// mode 0600) the first time, under [`lock_config`].
pub fn ensure_user_key() -> anyhow::Result<String> {
    let _lock = lock_config()?;
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
    let tmp = path.with_extension(format!("envd-tmp.{}", std::process::id()));
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

/// Held by the unit tests that point `ENVD_CONFIG_DIR` somewhere: the variable is the whole
/// process's, and `cargo test` runs tests as threads of one process.
#[cfg(test)]
pub(crate) static TEST_ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_pair_is_made_once_and_private() {
        let _env = TEST_ENV.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("ENVD_CONFIG_DIR", dir.path());
        // Made by many at once (two first `envd up`s): one key pair, both halves matching.
        let keys: Vec<String> = (0..8)
            .map(|_| std::thread::spawn(|| ensure_user_key().unwrap()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        let private = PrivateKey::read_openssh_file(key_path()).unwrap();
        assert_eq!(private.public_key().to_openssh().unwrap(), keys[0]);
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
