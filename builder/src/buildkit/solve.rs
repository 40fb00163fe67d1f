//! Solving a definition and exporting it as a Docker image with an image config.
//!
//! Docker Engine 20.10's exporter ignores `containerimage.config` as an exporter attribute, so
//! the build goes through the gateway, as envd does: `Control.Solve` with no definition and the
//! `moby` exporter opens a build; `LLBBridge.Solve` (tagged with the build id) solves our
//! definition; `LLBBridge.Return` hands back the result with the config as metadata; then the
//! first call returns the image digest. `Control.Status` streams progress meanwhile.

use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::proto::moby::buildkit::v1 as control;
use super::proto::moby::buildkit::v1::frontend as gateway;
use super::proto::pb;

/// One line of progress, for the caller to print.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A step started (or was found in the cache).
    Started {
        /// Step name.
        name: String,
        /// Whether it came from the cache.
        cached: bool,
    },
    /// A step finished, with an error when it failed.
    Completed {
        /// Step name.
        name: String,
        /// BuildKit's error.
        error: Option<String>,
    },
    /// Output of a running step.
    Log {
        /// Step name.
        name: String,
        /// The bytes.
        text: String,
    },
}

/// Where BuildKit puts the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// Docker's image store (Docker's embedded BuildKit only).
    Moby,
    /// BuildKit's own image store (a standalone buildkitd), pushed to the registry when asked.
    Image {
        /// Push to the registry the name points at.
        push: bool,
        /// Layers as plain tar: for a registry on the way to an engine next to it (see
        /// `Archive::uncompressed`).
        uncompressed: bool,
    },
    /// An archive streamed to the client through the build's session (a standalone buildkitd):
    /// `docker load`-able, or an OCI layout.
    Archive {
        /// The OCI layout rather than Docker's.
        oci: bool,
        /// Layers as plain tar: for an archive the engine loads at once, where gzip would cost
        /// a core for the whole image and be undone straight away (measured in
        /// docs/BENCHMARKS.md).
        uncompressed: bool,
    },
}

/// What a failed build says: BuildKit's error and the failing step's last output lines.
#[derive(Debug)]
pub struct BuildFailure {
    /// BuildKit's error message.
    pub error: String,
    /// The failing command's output (last lines).
    pub log: String,
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        if !self.log.is_empty() {
            write!(f, "\n--- output of the failing step ---\n{}", self.log)?;
        }
        Ok(())
    }
}

impl std::error::Error for BuildFailure {}

/// Why BuildKit refused a build before running it, told apart where the caller acts on it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The builder has no such exporter (Docker's BuildKit has only `moby`).
    #[error("BuildKit refused the build: {0}")]
    UnknownExporter(String),
    /// Anything else, in BuildKit's words.
    #[error("BuildKit refused the build: {0}")]
    Other(String),
}

impl Refusal {
    /// Reads BuildKit's message (it gives no code that tells these apart).
    fn from_message(message: &str) -> Self {
        if message.contains("exporter") && message.contains("could not be found") {
            Refusal::UnknownExporter(message.to_string())
        } else {
            Refusal::Other(message.to_string())
        }
    }
}

/// How long a gateway call waits for `Control.Solve` to register the build.
const REGISTRATION_WAIT: Duration = Duration::from_secs(30);
/// Status messages still in flight after a solve ends get this long to arrive.
const STATUS_SETTLE: Duration = Duration::from_millis(100);
/// BuildKit's answers (results, status) can be large.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Where a build's result goes, and the session it may use (`SolveRequest.Session`).
#[derive(Debug, Clone)]
pub struct Export<'a> {
    /// The image name.
    pub tag: &'a str,
    /// The exporter.
    pub exporter: Exporter,
    /// The client's session, for `local://` sources and archives.
    pub session: Option<&'a str>,
}

/// Builds `definition` and exports it with `config` (OCI image config JSON) as `export` says.
/// Returns the image digest.
pub async fn build_image(
    channel: Channel,
    definition: pb::Definition,
    config: Vec<u8>,
    export: Export<'_>,
    mut progress: impl FnMut(Progress) + Send,
) -> anyhow::Result<String> {
    let mut build = Build::open(channel, export)?;
    let result = match build.solve(definition, &mut progress).await? {
        Ok(result) => result,
        Err(status) => return Err(build.fail(status, &mut progress).await),
    };
    build.return_result(result, config).await?;
    build.finish(&mut progress).await
}

/// One build through the gateway: the `Control.Solve` call that exports it, the status stream,
/// and the bridge our definition is solved through.
struct Build {
    id: MetadataValue<tonic::metadata::Ascii>,
    bridge: gateway::llb_bridge_client::LlbBridgeClient<Channel>,
    export: JoinHandle<Result<tonic::Response<control::SolveResponse>, tonic::Status>>,
    status: mpsc::UnboundedReceiver<control::StatusResponse>,
    status_task: JoinHandle<()>,
    tracker: Tracker,
}

impl Build {
    /// Opens the build: `Control.Solve` with no definition and the exporter, and the status
    /// stream, each in a task of its own.
    fn open(channel: Channel, export: Export) -> anyhow::Result<Self> {
        // A unique build ref: a failed read must not give every build the same all-zero ref.
        let build_id = crate::random::hex(12)?;
        let ctl = control::control_client::ControlClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE);
        let mut exporter_attrs = BTreeMap::from([("name".to_string(), export.tag.to_string())]);
        let exporter = match export.exporter {
            Exporter::Moby => "moby",
            Exporter::Image { push, .. } if push => {
                exporter_attrs.insert("push".to_string(), "true".to_string());
                "image"
            }
            Exporter::Image { .. } => "image",
            Exporter::Archive { oci: true, .. } => "oci",
            Exporter::Archive { oci: false, .. } => "docker",
        };
        if let Exporter::Image { uncompressed, .. } | Exporter::Archive { uncompressed, .. } =
            export.exporter
        {
            if uncompressed {
                exporter_attrs.insert("compression".to_string(), "uncompressed".to_string());
            }
        }
        let request = control::SolveRequest {
            r#ref: build_id.clone(),
            exporter: exporter.into(),
            exporter_attrs,
            session: export.session.unwrap_or_default().to_string(),
            ..Default::default()
        };
        let mut solve_client = ctl.clone();
        let export = tokio::spawn(async move { solve_client.solve(request).await });
        let (tx, status) = mpsc::unbounded_channel();
        let status_task = tokio::spawn(stream_status(ctl, build_id.clone(), tx));
        let bridge = gateway::llb_bridge_client::LlbBridgeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE);
        Ok(Build {
            id: build_id.parse()?,
            bridge,
            export,
            status,
            status_task,
            tracker: Tracker::default(),
        })
    }

    /// A gateway request tagged with this build.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let key = "buildkit-controlapi-buildid";
        request.metadata_mut().insert(key, self.id.clone());
        request
    }

    /// Reports the status messages already here.
    fn drain(&mut self, progress: &mut impl FnMut(Progress)) {
        while let Ok(msg) = self.status.try_recv() {
            self.tracker.handle(msg, progress);
        }
    }

    /// Solves the definition through the bridge, reporting progress meanwhile. The outer error
    /// is a build BuildKit refused outright; the inner one a solve that failed.
    async fn solve(
        &mut self,
        definition: pb::Definition,
        progress: &mut impl FnMut(Progress),
    ) -> anyhow::Result<Result<gateway::Result, tonic::Status>> {
        // Control.Solve registers the build asynchronously; a gateway call that arrives first
        // (more likely through a relay or on a loaded machine) gets "no such job": ask again.
        let registered_by = Instant::now() + REGISTRATION_WAIT;
        let answer = loop {
            let request = self.request(gateway::SolveRequest {
                definition: Some(definition.clone()),
                allow_result_return: true,
                allow_result_array_ref: true,
                ..Default::default()
            });
            let mut bridge = self.bridge.clone();
            let call = bridge.solve(request);
            tokio::pin!(call);
            let answer = loop {
                tokio::select! {
                    r = &mut call => break r,
                    Some(msg) = self.status.recv() => self.tracker.handle(msg, progress),
                }
            };
            match answer {
                Err(s) if s.message().contains("no such job") => {
                    if self.export.is_finished() {
                        return Err(self.refused().await);
                    }
                    if Instant::now() >= registered_by {
                        break Err(s);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other,
            }
        };
        self.drain(progress);
        Ok(match answer {
            Ok(r) => Ok(r
                .into_inner()
                .result
                .context("BuildKit returned no result")?),
            Err(status) => Err(status),
        })
    }

    /// A build that never registered failed at once: why (e.g. an unknown exporter), rather
    /// than "no such job".
    async fn refused(&mut self) -> anyhow::Error {
        self.status_task.abort();
        match (&mut self.export).await {
            Ok(Err(status)) => Refusal::from_message(status.message()).into(),
            Ok(Ok(_)) => anyhow::anyhow!("BuildKit ended the build before it started"),
            Err(e) => anyhow::anyhow!("the build task failed: {e}"),
        }
    }

    /// Tells BuildKit the build is over, and reports the failure with the failing step's log.
    async fn fail(
        mut self,
        status: tonic::Status,
        progress: &mut impl FnMut(Progress),
    ) -> anyhow::Error {
        let message = status.message().to_string();
        let error = Some(gateway::Status {
            code: 2,
            message: message.clone(),
        });
        let request = self.request(gateway::ReturnRequest {
            result: None,
            error,
        });
        let _ = self.bridge.r#return(request).await;
        let _ = (&mut self.export).await;
        tokio::time::sleep(STATUS_SETTLE).await;
        self.drain(progress);
        self.status_task.abort();
        let log = self.tracker.failed_log();
        BuildFailure {
            error: message,
            log,
        }
        .into()
    }

    /// Hands the solved result back with the image config, for the exporter.
    async fn return_result(
        &mut self,
        mut result: gateway::Result,
        config: Vec<u8>,
    ) -> anyhow::Result<()> {
        result
            .metadata
            .insert("containerimage.config".into(), config);
        let request = self.request(gateway::ReturnRequest {
            result: Some(result),
            error: None,
        });
        self.bridge
            .r#return(request)
            .await
            .context("BuildKit refused the result")?;
        Ok(())
    }

    /// Waits for the export, reporting progress: the gateway solve is lazy, so the steps run
    /// now. Returns the image digest.
    async fn finish(mut self, progress: &mut impl FnMut(Progress)) -> anyhow::Result<String> {
        let exported = loop {
            tokio::select! {
                r = &mut self.export => break r,
                Some(msg) = self.status.recv() => self.tracker.handle(msg, progress),
            }
        };
        tokio::time::sleep(STATUS_SETTLE).await;
        self.drain(progress);
        self.status_task.abort();
        match exported.context("the solve task failed")? {
            Ok(response) => Ok(response
                .into_inner()
                .exporter_response
                .get("containerimage.digest")
                .cloned()
                .unwrap_or_default()),
            Err(status) => Err(BuildFailure {
                error: status.message().to_string(),
                log: self.tracker.failed_log(),
            }
            .into()),
        }
    }
}

/// Forwards `Control.Status` to the build. It runs in its own task: grpc-go sends the response
/// headers with the first message, which only comes once `LLBBridge.Solve` has started vertices.
async fn stream_status(
    mut ctl: control::control_client::ControlClient<Channel>,
    build_id: String,
    tx: mpsc::UnboundedSender<control::StatusResponse>,
) {
    let request = control::StatusRequest { r#ref: build_id };
    let Ok(resp) = ctl.status(request).await else {
        return;
    };
    let mut status = resp.into_inner();
    while let Ok(Some(msg)) = status.message().await {
        if tx.send(msg).is_err() {
            break;
        }
    }
}

/// Vertex names and output, to report progress and a failing step's log.
#[derive(Default)]
struct Tracker {
    names: BTreeMap<String, String>,
    logs: BTreeMap<String, String>,
    failed: Option<String>,
    /// Steps already reported as cached.
    cached: std::collections::BTreeSet<String>,
}

impl Tracker {
    fn handle(&mut self, msg: control::StatusResponse, progress: &mut impl FnMut(Progress)) {
        for v in msg.vertexes {
            self.names.insert(v.digest.clone(), v.name.clone());
            // BuildKit 0.13 reports a cached step once, already completed: say it was cached.
            if v.cached && v.error.is_empty() && self.cached.insert(v.digest.clone()) {
                progress(Progress::Started {
                    name: v.name.clone(),
                    cached: true,
                });
                if v.completed.is_none() {
                    continue;
                }
            }
            if !v.error.is_empty() {
                self.failed = Some(v.digest.clone());
                progress(Progress::Completed {
                    name: v.name,
                    error: Some(v.error),
                });
            } else if v.completed.is_some() {
                progress(Progress::Completed {
                    name: v.name,
                    error: None,
                });
            } else if v.started.is_some() && !self.cached.contains(&v.digest) {
                progress(Progress::Started {
                    name: v.name,
                    cached: v.cached,
                });
            }
        }
        for l in msg.logs {
            let text = String::from_utf8_lossy(&l.msg).into_owned();
            let entry = self.logs.entry(l.vertex.clone()).or_default();
            entry.push_str(&text);
            if entry.len() > 64 * 1024 {
                let mut cut = entry.len() - 32 * 1024;
                while !entry.is_char_boundary(cut) {
                    cut += 1;
                }
                entry.drain(..cut);
            }
            let name = self.names.get(&l.vertex).cloned().unwrap_or_default();
            progress(Progress::Log { name, text });
        }
    }

    fn failed_log(&self) -> String {
        self.failed
            .as_ref()
            .and_then(|d| self.logs.get(d))
            .map(|l| last_lines(l, 30))
            .unwrap_or_default()
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
