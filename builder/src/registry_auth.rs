//! Registry logins as `docker login` keeps them, for every place envd-rs talks to a registry: the
//! engine's pull and push (given with the request, as the docker CLI does) and a standalone
//! buildkitd's pushes and base-image pulls (asked for through the session's `Auth` service).
//!
//! The client's configuration is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`:
//! a credential helper for the host (`credHelpers`), else the default one (`credsStore`), else
//! the file's own `auths` entry (`auth`: base64 of `user:password`, or an `identitytoken`).
//! No configuration, or none for the host, means no login (an anonymous request), as with the
//! docker CLI; a file or a helper that cannot be read is an error naming it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use base64::Engine as _;
use serde::Deserialize;

/// A login for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name; empty with an identity token.
    pub username: String,
    /// The password or token.
    pub secret: String,
}

/// Docker Hub's key in `config.json` (the docker CLI's name for it).
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The parts of `config.json` that hold logins.
#[derive(Debug, Default, Deserialize)]
struct Config {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
}

/// One `auths` entry.
#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The configuration file the docker CLI reads.
pub fn config_path() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir).join("config.json"),
        None => crate::host::home_dir().join(".docker").join("config.json"),
    }
}

/// The login for `host` (`HOST[:PORT]`, as a registry is named in an image reference; Docker
/// Hub is `docker.io` or `registry-1.docker.io`), if the client has one.
pub fn login_for(host: &str) -> anyhow::Result<Option<Login>> {
    login_in(&config_path(), host)
}

/// The login for `host` that the configuration file `path` gives.
fn login_in(path: &std::path::Path, host: &str) -> anyhow::Result<Option<Login>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let config: Config = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a docker configuration file", path.display()))?;
    let key = config_key(host);
    let helper = config
        .cred_helpers
        .iter()
        .find(|(k, _)| config_key(k) == key)
        .map(|(_, h)| h)
        .or(config.creds_store.as_ref());
    if let Some(helper) = helper {
        return from_helper(&format!("docker-credential-{helper}"), &key)
            .with_context(|| format!("the credential helper {} names", path.display()));
    }
    let entry = config.auths.iter().find(|(k, _)| config_key(k) == key);
    match entry {
        Some((_, e)) => {
            from_entry(e).with_context(|| format!("{}: auths[{key:?}]", path.display()))
        }
        None => Ok(None),
    }
}

/// The registry of an image reference (`HOST[:PORT]/REPO:TAG`; Docker Hub when the first part
/// names no host).
pub fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// The engine's form of the login for `reference`'s registry (bollard's `X-Registry-Auth`).
pub fn engine_credentials(
    reference: &str,
) -> anyhow::Result<Option<bollard::auth::DockerCredentials>> {
    let registry = registry_of(reference);
    Ok(
        login_for(registry)?.map(|l| bollard::auth::DockerCredentials {
            username: (!l.username.is_empty()).then_some(l.username.clone()),
            password: (!l.username.is_empty()).then_some(l.secret.clone()),
            identitytoken: l.username.is_empty().then_some(l.secret),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        }),
    )
}

/// When `error` is a registry refusing a request for want of a login (BuildKit's or the
/// engine's words for a 401 or 403), what to do about it, naming the registry and whether the
/// client has a login for it.
pub fn refusal_hint(error: &str) -> Option<String> {
    let refused = [
        "401 Unauthorized",
        "403 Forbidden",
        "no basic auth credentials",
    ]
    .iter()
    .any(|w| error.contains(w));
    if !refused {
        return None;
    }
    // BuildKit names the request's URL, http(s)://HOST/v2/...; other `scheme://` names in the
    // message (a `local://` or `docker-image://` source) are not the registry's.
    let host = error.split("://").skip(1).find_map(|after| {
        let (host, path) = after.split_once('/')?;
        (!host.is_empty() && path.starts_with("v2")).then_some(host)
    })?;
    let config = config_path();
    Some(match login_for(host) {
        Ok(Some(_)) => format!(
            "the registry {host} refused the login {} gives for it; check it with `docker login {host}`",
            config.display()
        ),
        Ok(None) => format!(
            "the registry {host} wants a login and {} has none for it: run `docker login {host}` (envd-rs gives the builder the docker CLI's logins)",
            config.display()
        ),
        Err(e) => format!("the registry {host} wants a login, and reading it failed: {e:#}"),
    })
}

/// The key a host has in `config.json`: Docker Hub under its historical URL, others as
/// `HOST[:PORT]` (a key written with a scheme or a path matches too).
fn config_key(host: &str) -> String {
    let bare = host
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let bare = bare.split('/').next().unwrap_or(bare);
    match bare {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY.to_string(),
        other => other.to_string(),
    }
}

/// A login from an `auths` entry; None when the entry holds neither.
fn from_entry(entry: &AuthEntry) -> anyhow::Result<Option<Login>> {
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Login {
            username: String::new(),
            secret: token.clone(),
        }));
    }
    let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .context("`auth` is not base64")?;
    let text = String::from_utf8(bytes).context("`auth` is not UTF-8")?;
    let Some((username, secret)) = text.split_once(':') else {
        bail!("`auth` is not base64 of user:password");
    };
    Ok(Some(Login {
        username: username.to_string(),
        secret: secret.to_string(),
    }))
}

/// The helper's answer in the credential-helper protocol (`docker-credential-NAME get`, the
/// server's key on stdin, JSON out). A helper without a login for the host says so on stdout
/// and exits 1: that is no login, as for the docker CLI.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

fn from_helper(program: &str, key: &str) -> anyhow::Result<Option<Login>> {
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(key.as_bytes());
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{program} get {key}: {}",
            format!("{stdout}{stderr}").trim()
        );
    }
    let answer: HelperAnswer = serde_json::from_str(&stdout)
        .with_context(|| format!("{program} get {key}: not the helper protocol's JSON"))?;
    let login = Login {
        username: if answer.username == "<token>" {
            String::new()
        } else {
            answer.username
        },
        secret: answer.secret,
    };
    Ok(Some(login))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_registry_and_what_to_do() {
        let said = "failed to load cache key: unexpected status from HEAD request to http://127.0.0.1:9/v2/library/debian/manifests/bookworm: 401 Unauthorized";
        let hint = refusal_hint(said).unwrap();
        assert!(hint.contains("the registry 127.0.0.1:9"), "{hint}");
        assert!(hint.contains("docker login 127.0.0.1:9"), "{hint}");
        assert!(refusal_hint("failed to solve: process exited with 1").is_none());
        let said = "local://envd-context: failed to push 127.0.0.1:9/envd/a:b: unexpected status from HEAD request to http://127.0.0.1:9/v2/envd/a/blobs/sha256:0: 401 Unauthorized";
        let hint = refusal_hint(said).unwrap();
        assert!(hint.starts_with("the registry 127.0.0.1:9 "), "{hint}");
    }

    #[test]
    fn hosts_match_the_keys_the_docker_cli_writes() {
        assert_eq!(config_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(config_key("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
        for hub in ["docker.io", "registry-1.docker.io", DOCKER_HUB_KEY] {
            assert_eq!(config_key(hub), DOCKER_HUB_KEY);
        }
        assert_eq!(registry_of("127.0.0.1:5000/envd/a:b"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/a"), "localhost");
        assert_eq!(registry_of("ghcr.io/x/y:z"), "ghcr.io");
        assert_eq!(registry_of("library/debian:bookworm"), "docker.io");
        assert_eq!(registry_of("debian"), "docker.io");
    }

    #[test]
    fn entries_give_a_password_or_a_token_and_bad_ones_are_named() {
        let basic = AuthEntry {
            auth: Some(base64::engine::general_purpose::STANDARD.encode("ann:pa:ss")),
            identitytoken: None,
        };
        let login = from_entry(&basic).unwrap().unwrap();
        assert_eq!(
            (login.username.as_str(), login.secret.as_str()),
            ("ann", "pa:ss")
        );
        let token = AuthEntry {
            auth: None,
            identitytoken: Some("tok".into()),
        };
        assert_eq!(from_entry(&token).unwrap().unwrap().secret, "tok");
        assert!(from_entry(&AuthEntry::default()).unwrap().is_none());
        let bad = AuthEntry {
            auth: Some("%%%".into()),
            identitytoken: None,
        };
        assert!(format!("{:#}", from_entry(&bad).unwrap_err()).contains("base64"));
    }

    #[test]
    fn the_file_and_its_helpers_are_read_as_the_docker_cli_reads_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        assert!(
            login_in(&config, "127.0.0.1:5000").unwrap().is_none(),
            "no file, no login"
        );
        let auth = base64::engine::general_purpose::STANDARD.encode("ann:secret");
        std::fs::write(
            &config,
            format!(r#"{{"auths": {{"http://127.0.0.1:5000": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        let login = login_in(&config, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(login.secret, "secret");
        assert!(login_in(&config, "127.0.0.1:5001").unwrap().is_none());
        std::fs::write(&config, "{\"auths\": [").unwrap();
        let err = format!("{:#}", login_in(&config, "x").unwrap_err());
        assert!(
            err.contains("config.json: not a docker configuration file"),
            "{err}"
        );

        // The helper protocol: the key on stdin, JSON out, "credentials not found" is none.
        let helper = dir.path().join("docker-credential-test");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread key\ncase $key in\n  found) echo '{\"Username\":\"<token>\",\"Secret\":\"t0k\"}' ;;\n  missing) echo 'credentials not found in native keychain'; exit 1 ;;\n  *) echo 'keychain locked' >&2; exit 1 ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = helper.to_str().unwrap();
        let login = from_helper(program, "found").unwrap().unwrap();
        assert_eq!(
            (login.username.as_str(), login.secret.as_str()),
            ("", "t0k")
        );
        assert!(from_helper(program, "missing").unwrap().is_none());
        let err = format!("{:#}", from_helper(program, "other").unwrap_err());
        assert!(err.contains("keychain locked"), "{err}");
    }
}
