//! The working directory on a cluster, and commands attached to a pod.
//!
//! On Docker the project is the host's directory, mounted. A node cannot see this machine, so
//! the working directory is a volume claim instead: the first `envd up` copies the build context
//! into it (a tar stream through the API server's exec, extracted by the image's `tar`), marks
//! the claim, and no later `envd up` copies again: what the user changed in the environment is
//! never overwritten.

use std::io::{Seek, Write};
use std::path::Path;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{AttachParams, AttachedProcess, Patch, PatchParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::manifest::{CONTAINER, FILLED};
use super::KubeRunner;
use crate::env::spec::{EnvSpec, MountSource};
use crate::env::terminal::{self, RawTerminal};

/// GNU tar reads whole records of 20 blocks and waits for the rest of one before it exits; the
/// exec's stdin cannot be closed on older API servers, so the archive is padded to a record.
const TAR_RECORD: u64 = 10240;

/// The build context as a tar file (symbolic links kept as links), padded to a whole record.
fn context_tar(dir: &Path) -> anyhow::Result<std::fs::File> {
    let mut file = tempfile::tempfile().context("cannot make a temporary file")?;
    let mut tar = tar::Builder::new(&mut file);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)
        .with_context(|| format!("cannot read {}", dir.display()))?;
    tar.finish()?;
    drop(tar);
    let len = file.stream_position()?;
    let padding = (TAR_RECORD - len % TAR_RECORD) % TAR_RECORD;
    file.write_all(&vec![0; padding as usize])?;
    file.rewind()?;
    Ok(file)
}

/// Copies the build context into the working directory's claim, once per claim.
pub async fn fill_once(
    runner: &KubeRunner,
    spec: &EnvSpec,
    pod: &str,
    claim: &str,
) -> anyhow::Result<()> {
    let claims = runner.claims();
    let c: PersistentVolumeClaim = (claims.get(claim).await)
        .map_err(|e| runner.error("cannot read the working directory's claim", e))?;
    let annotations = c.metadata.annotations.unwrap_or_default();
    if let Some(when) = annotations.get(FILLED) {
        crate::say!(
            "workdir: {} keeps the files of the volume {claim} (filled {when}); nothing copied over them",
            spec.workdir
        );
        return Ok(());
    }
    let Some(dir) = spec.mounts.iter().find_map(|m| match &m.source {
        MountSource::Host(p) if m.target == spec.workdir => Some(p.clone()),
        _ => None,
    }) else {
        return Ok(());
    };
    let ids = user_ids(spec)?;
    let started = std::time::Instant::now();
    let tar = tokio::task::spawn_blocking(move || context_tar(&dir)).await??;
    let bytes = tar.metadata()?.len();
    extract(runner, pod, &spec.workdir, &ids, tar).await?;
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {FILLED: when}}});
    (claims
        .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
        .await)
        .map_err(|e| runner.error("cannot mark the working directory's claim", e))?;
    crate::say!(
        "workdir: copied the build context into the volume {claim} ({:.1} MB in {:.1}s); later envd up keeps what is there",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The `UID:GID` envd-init gives the user (its `--user-ids`).
fn user_ids(spec: &EnvSpec) -> anyhow::Result<String> {
    let at = spec.args.iter().position(|a| a == "--user-ids");
    at.and_then(|i| spec.args.get(i + 1))
        .cloned()
        .context("the environment has no --user-ids")
}

/// Streams the tar into `tar -x` in the pod (as root, then owned by the user).
async fn extract(
    runner: &KubeRunner,
    pod: &str,
    workdir: &str,
    ids: &str,
    mut tar: std::fs::File,
) -> anyhow::Result<()> {
    let script = r#"tar -x --no-same-owner --skip-old-files -C "$1" -f - && chown -R "$2" "$1""#;
    let argv = ["sh", "-c", script, "sh", workdir, ids];
    let mut ap = AttachParams::default()
        .container(CONTAINER)
        .stdin(true)
        .stdout(true)
        .stderr(true);
    ap.max_stdin_buf_size = Some(256 * 1024);
    let mut proc = (runner.pods().exec(pod, argv, &ap).await)
        .map_err(|e| runner.error("cannot copy the build context into the environment", e))?;
    let mut stdin = proc.stdin().context("no stdin")?;
    let mut stderr = proc.stderr().context("no stderr")?;
    let status = proc.take_status().context("no status")?;
    let feed = async {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = std::io::Read::read(&mut tar, &mut buf)?;
            if n == 0 {
                break;
            }
            stdin.write_all(&buf[..n]).await?;
        }
        stdin.flush().await?;
        // Kept open: dropping it would close the whole exec on API servers before 1.29.
        anyhow::Ok(stdin)
    };
    let mut err = Vec::new();
    let (fed, _) = tokio::join!(feed, stderr.read_to_end(&mut err));
    let _stdin = fed?;
    let code = super::exit_code(status.await);
    if code != 0 {
        bail!(
            "copying the build context into {workdir} failed (exit {code}): {} (the image needs GNU tar)",
            String::from_utf8_lossy(&err).trim()
        );
    }
    Ok(())
}

/// Relays this process's stdin, stdout and stderr (a raw terminal with `tty`, kept at our size)
/// to an exec in the pod; returns its exit code.
pub async fn attach(mut proc: AttachedProcess, tty: bool) -> anyhow::Result<i64> {
    let _raw = if tty { RawTerminal::enter() } else { None };
    let mut stdin = proc.stdin().context("no stdin")?;
    let mut stdout = proc.stdout().context("no stdout")?;
    let stderr = proc.stderr();
    let status = proc.take_status().context("no status")?;
    if tty {
        if let Some(mut sizes) = proc.terminal_size() {
            tokio::spawn(async move {
                use futures_util::SinkExt;
                use tokio::signal::unix::{signal, SignalKind};
                let mut winch = signal(SignalKind::window_change()).ok();
                loop {
                    if let Some((height, width)) = terminal::terminal_size() {
                        let size = kube::api::TerminalSize { width, height };
                        if sizes.send(size).await.is_err() {
                            return;
                        }
                    }
                    let Some(w) = winch.as_mut() else { return };
                    if w.recv().await.is_none() {
                        return;
                    }
                }
            });
        }
    }
    // stdin is read by a plain thread (tokio's cannot be cancelled, see terminal::stdin_chunks).
    let mut chunks = terminal::stdin_chunks();
    let feed = tokio::spawn(async move {
        while let Some(chunk) = chunks.recv().await {
            if stdin.write_all(&chunk).await.is_err() || stdin.flush().await.is_err() {
                return;
            }
        }
    });
    let out = async {
        tokio::io::copy(&mut stdout, &mut tokio::io::stdout()).await?;
        anyhow::Ok(())
    };
    let err = async {
        if let Some(mut e) = stderr {
            tokio::io::copy(&mut e, &mut tokio::io::stderr()).await?;
        }
        anyhow::Ok(())
    };
    let (o, e) = tokio::join!(out, err);
    o?;
    e?;
    let code = super::exit_code(status.await);
    feed.abort();
    Ok(code)
}
