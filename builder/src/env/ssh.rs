//! The host's side of `ssh NAME.envd`: the known_hosts file that pins each
//! environment's host key, and the `Host NAME.envd` entries that `~/.ssh/config` includes. Plain
//! OpenSSH (and so `scp`, `rsync`, VS Code Remote-SSH) reads them; host-key checking stays on.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::host::{config_dir, key_path, lock_config, passwd_home, write_file};

/// The known_hosts file envd owns: one `NAME.envd` line per environment.
pub fn known_hosts_path() -> PathBuf {
    config_dir().join("known_hosts")
}

/// The file of `Host NAME.envd` entries.
pub fn ssh_config_path() -> PathBuf {
    config_dir().join("ssh_config")
}

/// The user's OpenSSH client config, which gets one `Include` line for [`ssh_config_path`].
/// `ENVD_SSH_CONFIG` overrides it.
pub fn user_ssh_config_path() -> PathBuf {
    std::env::var_os("ENVD_SSH_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| passwd_home().join(".ssh/config"))
}

/// The host alias of an environment.
pub fn host_alias(name: &str) -> String {
    format!("{name}.envd")
}

/// The container's host key as one plain `TYPE BASE64` entry. What the container's `.pub` file
/// holds is not trusted: more lines, `@cert-authority` or `@revoked` markers, host patterns or
/// anything that is not one public key is refused, so a container can never add its own lines
/// to envd's known_hosts.
pub fn plain_host_key(text: &str) -> anyhow::Result<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let [line] = lines.as_slice() else {
        bail!("expected one public key line, found {}", lines.len());
    };
    let mut key = ssh_key::PublicKey::from_openssh(line)
        .map_err(|e| anyhow::anyhow!("not one plain public key ({e}): {line:.80}"))?;
    key.set_comment("");
    Ok(key.to_openssh()?.trim().to_string())
}

fn read_or_empty(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Replaces the entry for `alias` in a known_hosts text.
fn replace_known_host(text: &str, alias: &str, host_key: Option<&str>) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(alias))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(k) = host_key {
        out.push_str(&format!("{alias} {k}\n"));
    }
    out
}

/// Markers around one environment's block in [`ssh_config_path`].
fn markers(alias: &str) -> (String, String) {
    (
        format!("# envd begin {alias}"),
        format!("# envd end {alias}"),
    )
}

/// Replaces (or removes, with `block = None`) the block for `alias`.
fn replace_block(text: &str, alias: &str, block: Option<&str>) -> String {
    let (begin, end) = markers(alias);
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line == begin {
            skipping = true;
            continue;
        }
        if skipping {
            if line == end {
                skipping = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(b) = block {
        out.push_str(&format!("{begin}\n{b}{end}\n"));
    }
    out
}

/// How OpenSSH reaches an environment's sshd.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// A port on 127.0.0.1 (Docker publishes sshd there).
    Port(u16),
    /// A `ProxyCommand` that relays to sshd (a cluster's port-forward: `envd kube-proxy`).
    Proxy(String),
}

/// The `Host` entry for one environment.
pub fn host_entry(name: &str, route: &Route) -> String {
    let alias = host_alias(name);
    let reach = match route {
        Route::Port(port) => format!("  HostName 127.0.0.1\n  Port {port}\n"),
        Route::Proxy(command) => format!("  ProxyCommand {command}\n"),
    };
    format!(
        "Host {alias}\n{reach}  User envd\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  HostKeyAlias {alias}\n  StrictHostKeyChecking yes\n  ForwardAgent yes\n",
        key_path().display(),
        known_hosts_path().display(),
    )
}

/// Records an environment: pins its host key and writes its `Host` entry, and makes sure the
/// user's `~/.ssh/config` includes envd's file. Under [`lock_config`], so concurrent `envd up`s
/// keep each other's entries.
pub fn add_environment(name: &str, route: &Route, host_key: &str) -> anyhow::Result<()> {
    let host_key = plain_host_key(host_key)
        .with_context(|| format!("the environment {name} offers an unusable SSH host key"))?;
    let _lock = lock_config()?;
    let host_key = host_key.as_str();
    let alias = host_alias(name);
    let dir = config_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let kh = known_hosts_path();
    let text = replace_known_host(&read_or_empty(&kh)?, &alias, Some(host_key.trim()));
    write_file(&kh, text.as_bytes(), 0o644)?;
    let cfg = ssh_config_path();
    let text = replace_block(
        &read_or_empty(&cfg)?,
        &alias,
        Some(&host_entry(name, route)),
    );
    write_file(&cfg, text.as_bytes(), 0o644)?;
    include_unlocked()
}

/// Removes an environment's `Host` entry and pinned key. Missing files are fine.
pub fn remove_environment(name: &str) -> anyhow::Result<()> {
    let _lock = lock_config()?;
    let alias = host_alias(name);
    let kh = known_hosts_path();
    if kh.exists() {
        let text = replace_known_host(&read_or_empty(&kh)?, &alias, None);
        write_file(&kh, text.as_bytes(), 0o644)?;
    }
    let cfg = ssh_config_path();
    if cfg.exists() {
        let text = replace_block(&read_or_empty(&cfg)?, &alias, None);
        write_file(&cfg, text.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Whether `~/.ssh/config` (or `ENVD_SSH_CONFIG`) has an entry for the environment.
pub fn has_entry(name: &str) -> bool {
    let (begin, _) = markers(&host_alias(name));
    read_or_empty(&ssh_config_path())
        .map(|t| t.lines().any(|l| l == begin))
        .unwrap_or(false)
}

/// Puts `Include <envd's ssh_config>` at the top of the user's ssh config (it must come before
/// any `Host` block to apply everywhere), once.
pub fn ensure_include() -> anyhow::Result<()> {
    let _lock = lock_config()?;
    include_unlocked()
}

fn include_unlocked() -> anyhow::Result<()> {
    let user_cfg = user_ssh_config_path();
    let include = format!("Include {}", ssh_config_path().display());
    let text = read_or_empty(&user_cfg)?;
    if text.lines().any(|l| l.trim() == include) {
        return Ok(());
    }
    let dir = user_cfg.parent().context("ssh config has no directory")?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    if text.contains("\r\n") {
        bail!(
            "{} has Windows line endings; add this line at its top yourself: {include}",
            user_cfg.display()
        );
    }
    let new = format!("# Added by envd: the NAME.envd hosts.\n{include}\n\n{text}");
    write_file(&user_cfg, new.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_plain_host_key_is_ever_pinned() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK9u8bGvtVaJ0JJmEXvWoJ6x4fNwF9ojTY5HsIhKf0uX";
        assert_eq!(plain_host_key(&format!("{key} root@box\n")).unwrap(), key);
        for bad in [
            format!("{key}\n* {key}\n"),
            format!("@cert-authority * {key}"),
            format!("* {key}"),
            "ssh-ed25519 AAAA!!!".to_string(),
            String::new(),
        ] {
            assert!(plain_host_key(&bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn a_symlinked_ssh_config_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles-ssh-config");
        std::fs::write(&real, "Host x\n").unwrap();
        let link = dir.path().join("config");
        std::os::unix::fs::symlink("dotfiles-ssh-config", &link).unwrap();
        write_file(&link, b"Include y\nHost x\n", 0o600).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(&real).unwrap(),
            "Include y\nHost x\n"
        );
    }

    #[test]
    fn blocks_are_replaced_and_removed_without_touching_others() {
        let text = "Host other\n  Port 1\n";
        let a = replace_block(text, "a.envd", Some("Host a.envd\n  Port 2\n"));
        let b = replace_block(&a, "b.envd", Some("Host b.envd\n  Port 3\n"));
        let a2 = replace_block(&b, "a.envd", Some("Host a.envd\n  Port 4\n"));
        assert!(a2.contains("Port 4") && !a2.contains("Port 2") && a2.contains("Port 3"));
        assert!(a2.starts_with("Host other\n  Port 1\n"));
        let gone = replace_block(&a2, "a.envd", None);
        assert!(!gone.contains("a.envd") && gone.contains("b.envd"));
    }

    #[test]
    fn concurrent_additions_keep_every_entry() {
        let _env = crate::host::TEST_ENV
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("ENVD_CONFIG_DIR", dir.path());
        std::env::set_var("ENVD_SSH_CONFIG", dir.path().join("user_ssh_config"));
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK9u8bGvtVaJ0JJmEXvWoJ6x4fNwF9ojTY5HsIhKf0uX";
        let threads: Vec<_> = (0..24)
            .map(|i| {
                std::thread::spawn(move || {
                    add_environment(&format!("env{i}"), &Route::Port(2000 + i), key).unwrap()
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let config = std::fs::read_to_string(ssh_config_path()).unwrap();
        let known = std::fs::read_to_string(known_hosts_path()).unwrap();
        for i in 0..24 {
            assert!(
                config.contains(&format!("Host env{i}.envd\n")),
                "env{i} lost"
            );
            assert!(
                known.contains(&format!("env{i}.envd ssh-ed25519")),
                "env{i} key lost"
            );
        }
        let user = std::fs::read_to_string(user_ssh_config_path()).unwrap();
        assert_eq!(user.matches("Include ").count(), 1, "{user}");
        std::env::remove_var("ENVD_CONFIG_DIR");
        std::env::remove_var("ENVD_SSH_CONFIG");
    }

    #[test]
    fn known_hosts_lines_are_per_alias() {
        let t = replace_known_host(
            "x.envd ssh-ed25519 AAA\n",
            "y.envd",
            Some("ssh-ed25519 BBB"),
        );
        let t = replace_known_host(&t, "x.envd", Some("ssh-ed25519 CCC"));
        assert_eq!(t, "y.envd ssh-ed25519 BBB\nx.envd ssh-ed25519 CCC\n");
        assert_eq!(
            replace_known_host(&t, "y.envd", None),
            "x.envd ssh-ed25519 CCC\n"
        );
    }
}
