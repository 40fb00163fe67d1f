//! How what the client has reaches BuildKit, and how the built image comes back, per builder:
//!
//! - Docker's embedded BuildKit sees the engine's images: the runtime binaries and the build
//!   context's files are imported as local images (`docker.rs`), and the image lands in the
//!   engine through the `moby` exporter.
//! - A standalone buildkitd sees neither: the files travel in the build's session as `local://`
//!   directories ([`session_dirs`]), and the image comes back as the `docker`/`oci` exporter's
//!   archive through the same session ([`receive_archive`]): into the engine with `docker load`
//!   (so `envd up` runs it), or into the file `--output` names.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::build::{Plan, RuntimeImage};
use crate::build_context::BuildContext;
use crate::buildkit::llb::ClientFiles;
use crate::buildkit::session::{ArchiveChunks, Content, LocalDir, LocalEntry};

/// The session directory holding `/envd-init` and `/envd-sshd`.
pub const RUNTIME_DIR: &str = "envd-runtime";
/// The session directory holding the build context's files under `context/`.
pub const CONTEXT_DIR: &str = "envd-context";

/// The session directory holding the host's CA bundle as [`HOST_CA_FILE`].
pub const HOST_CA_DIR: &str = "envd-host-ca";
/// The CA bundle's name in its session directory or engine image.
pub const HOST_CA_FILE: &str = "host-ca.crt";
/// The engine image holding the host's CA bundle. One name whatever the bundle holds, so the
/// LLB (and its digest) is the same on every host; BuildKit keys the steps that mount it by the
/// image's content, so a changed bundle still reruns them.
pub const HOST_CA_IMAGE: &str = "envd-rs/host-ca:current";

/// Where the host's CA bundle comes from for this builder, when the host has one. A session
/// directory's BuildKit cache key is its content, so it too has one name on every host.
pub fn host_ca_source(via_session: bool, bundle: Option<&std::path::Path>) -> Option<ClientFiles> {
    bundle.map(|_| match via_session {
        true => ClientFiles::Session {
            name: HOST_CA_DIR.into(),
            content: "bundle".into(),
        },
        false => ClientFiles::Image(HOST_CA_IMAGE.into()),
    })
}

/// Where the runtime binaries and the context's files come from for this builder: engine images
/// named by their content, or session directories keyed by it.
pub fn sources(
    via_session: bool,
    runtime: Option<&RuntimeImage>,
    context: &BuildContext,
) -> (Option<ClientFiles>, Option<ClientFiles>) {
    let runtime = runtime.map(|r| match via_session {
        true => ClientFiles::Session {
            name: RUNTIME_DIR.into(),
            content: r.tag.clone(),
        },
        false => ClientFiles::Image(r.name()),
    });
    let context = (!context.is_empty()).then(|| match via_session {
        true => ClientFiles::Session {
            name: CONTEXT_DIR.into(),
            content: context.hash[..16].to_string(),
        },
        false => ClientFiles::Image(context.image()),
    });
    (runtime, context)
}

/// The directories a standalone buildkitd reads in this plan's session.
pub fn session_dirs(plan: &Plan) -> anyhow::Result<BTreeMap<String, LocalDir>> {
    let mut dirs = BTreeMap::new();
    if let Some(runtime) = &plan.runtime {
        let mut dir = LocalDir::default();
        for bin in ["envd-init", "envd-sshd"] {
            let path = runtime.dir.join(bin);
            let size = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            dir.insert(bin, LocalEntry::File(0o755, Content::Host(path, size)));
        }
        dirs.insert(RUNTIME_DIR.to_string(), dir);
    }
    if let Some(path) = &plan.host_ca {
        let mut dir = LocalDir::default();
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read the CA bundle {}", path.display()))?
            .len();
        let file = LocalEntry::File(0o644, Content::Host(path.clone(), size));
        dir.insert(HOST_CA_FILE, file);
        dirs.insert(HOST_CA_DIR.to_string(), dir);
    }
    if !plan.context.is_empty() {
        let mut dir = LocalDir::default();
        let root = crate::build_context::ROOT.trim_start_matches('/');
        dir.insert(root, LocalEntry::Dir(0o755));
        for e in &plan.context.entries {
            let path = format!("{root}/{}", e.rel);
            let entry = match (&e.data, &e.link) {
                (Some(d), _) => LocalEntry::File(e.mode, Content::Bytes(Arc::new(d.clone()))),
                (None, Some(target)) => LocalEntry::Link(target.clone()),
                (None, None) => LocalEntry::Dir(e.mode),
            };
            dir.insert(&path, entry);
        }
        dirs.insert(CONTEXT_DIR.to_string(), dir);
    }
    Ok(dirs)
}

/// Where an exported archive goes.
#[derive(Debug, Clone)]
pub enum ArchiveTo {
    /// `docker load` into the engine.
    Engine,
    /// This file.
    File(PathBuf),
}

/// Starts taking an archive: returns where the session puts its chunks and the task that ends
/// when all of it is loaded or written (or failed).
pub fn receive_archive(to: ArchiveTo) -> (ArchiveChunks, JoinHandle<anyhow::Result<()>>) {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        match to {
            ArchiveTo::Engine => load_into_engine(rx).await,
            ArchiveTo::File(path) => write_file(rx, &path).await,
        }
    });
    (tx, task)
}

async fn load_into_engine(rx: mpsc::Receiver<std::io::Result<bytes::Bytes>>) -> anyhow::Result<()> {
    let docker = crate::docker::connect_for_transfers().await?;
    let options = bollard::query_parameters::ImportImageOptions {
        quiet: true,
        ..Default::default()
    };
    let mut answers = docker.import_image_stream(options, ReceiverStream::new(rx), None);
    while let Some(answer) = answers.next().await {
        let info = answer.context("loading the built image into the Docker engine failed")?;
        if let Some(e) = info.error_detail.and_then(|d| d.message) {
            anyhow::bail!("loading the built image into the Docker engine failed: {e}");
        }
    }
    Ok(())
}

async fn write_file(
    mut rx: mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let what = || format!("cannot write {}", path.display());
    let mut file = tokio::fs::File::create(path).await.with_context(what)?;
    while let Some(chunk) = rx.recv().await {
        file.write_all(&chunk?).await.with_context(what)?;
    }
    file.flush().await.with_context(what)?;
    Ok(())
}
