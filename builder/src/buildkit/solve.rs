//! Solving a definition and exporting it as a Docker image with an image config.
//!
//! Docker Engine 20.10's exporter ignores `containerimage.config` as an exporter attribute, so
//! the build goes through the gateway, as envd does: `Control.Solve` with no definition and the
//! `moby` exporter opens a build; `LLBBridge.Solve` (tagged with the build id) solves our
//! definition; `LLBBridge.Return` hands back the result with the config as metadata; then the
//! first call returns the image digest. `Control.Status` streams progress meanwhile.

use std::collections::BTreeMap;

use anyhow::Context;
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

/// Builds `definition` and exports it to the Docker image `tag` with `config` (OCI image config
/// JSON). Returns the image digest.
pub async fn build_image(
    channel: Channel,
    definition: pb::Definition,
    config: Vec<u8>,
    tag: &str,
    exporter: Exporter,
    mut progress: impl FnMut(Progress) + Send,
) -> anyhow::Result<String> {
    // A unique build ref: a failed read must not give every build the same all-zero ref.
    let build_id = crate::random::hex(12)?;
    let ctl = control::control_client::ControlClient::new(channel.clone())
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut exporter_attrs = BTreeMap::new();
    exporter_attrs.insert("name".to_string(), tag.to_string());
    let exporter = match exporter {
        Exporter::Moby => "moby",
        Exporter::Image { push } => {
            if push {
                exporter_attrs.insert("push".to_string(), "true".to_string());
            }
            "image"
        }
    };
    let solve_req = control::SolveRequest {
        r#ref: build_id.clone(),
        definition: None,
        exporter: exporter.into(),
        exporter_attrs,
        session: String::new(),
        frontend: String::new(),
        frontend_attrs: BTreeMap::new(),
        entitlements: vec![],
    };
    let mut solve_client = ctl.clone();
    let solve = tokio::spawn(async move { solve_client.solve(solve_req).await });

    // Status stream, in its own task: grpc-go sends the response headers with the first
    // message, which only comes once LLBBridge.Solve below has started vertices.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<control::StatusResponse>();
    let mut status_client = ctl.clone();
    let status_ref = build_id.clone();
    let status_task = tokio::spawn(async move {
        let Ok(resp) = status_client
            .status(control::StatusRequest { r#ref: status_ref })
            .await
        else {
            return;
        };
        let mut status = resp.into_inner();
        while let Ok(Some(msg)) = status.message().await {
            if tx.send(msg).is_err() {
                break;
            }
        }
    });

    let mut bridge = gateway::llb_bridge_client::LlbBridgeClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024);
    let id: MetadataValue<_> = build_id.parse()?;

    let mut tracker = Tracker::default();
    // Control.Solve registers the build asynchronously; a gateway call that arrives first (more
    // likely through a relay or on a loaded machine) gets "no such job": ask again shortly.
    let registered_by = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let solved = loop {
        let mut req = tonic::Request::new(gateway::SolveRequest {
            definition: Some(definition.clone()),
            frontend: String::new(),
            frontend_opt: BTreeMap::new(),
            allow_result_return: true,
            allow_result_array_ref: true,
            r#final: false,
        });
        req.metadata_mut()
            .insert("buildkit-controlapi-buildid", id.clone());
        let call = bridge.solve(req);
        tokio::pin!(call);
        let r = loop {
            tokio::select! {
                r = &mut call => break r,
                Some(msg) = rx.recv() => tracker.handle(msg, &mut progress),
            }
        };
        match r {
            Err(s) if s.message().contains("no such job") => {
                // A build that never registers failed at once: say why (e.g. an unknown
                // exporter) rather than "no such job".
                if solve.is_finished() {
                    status_task.abort();
                    return match solve.await {
                        Ok(Err(status)) => Err(anyhow::anyhow!(
                            "BuildKit refused the build: {}",
                            status.message()
                        )),
                        Ok(Ok(_)) => Err(anyhow::anyhow!(
                            "BuildKit ended the build before it started"
                        )),
                        Err(e) => Err(anyhow::anyhow!("the build task failed: {e}")),
                    };
                }
                if std::time::Instant::now() >= registered_by {
                    break Err(s);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    while let Ok(msg) = rx.try_recv() {
        tracker.handle(msg, &mut progress);
    }
    let result = match solved {
        Ok(r) => r.into_inner().result,
        Err(status) => {
            // Tell BuildKit the build is over, then report the failure with its log.
            let mut ret = tonic::Request::new(gateway::ReturnRequest {
                result: None,
                error: Some(gateway::Status {
                    code: 2,
                    message: status.message().to_string(),
                }),
            });
            ret.metadata_mut()
                .insert("buildkit-controlapi-buildid", id.clone());
            let _ = bridge.r#return(ret).await;
            let _ = solve.await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            while let Ok(msg) = rx.try_recv() {
                tracker.handle(msg, &mut progress);
            }
            status_task.abort();
            let log = tracker.failed_log();
            return Err(BuildFailure {
                error: status.message().to_string(),
                log,
            }
            .into());
        }
    };
    let mut result = result.context("BuildKit returned no result")?;
    result
        .metadata
        .insert("containerimage.config".into(), config);
    let mut ret = tonic::Request::new(gateway::ReturnRequest {
        result: Some(result),
        error: None,
    });
    ret.metadata_mut().insert("buildkit-controlapi-buildid", id);
    bridge
        .r#return(ret)
        .await
        .context("BuildKit refused the result")?;
    // The gateway solve is lazy: the steps run now, while exporting, so keep reporting.
    tokio::pin!(solve);
    let solved = loop {
        tokio::select! {
            r = &mut solve => break r,
            Some(msg) = rx.recv() => tracker.handle(msg, &mut progress),
        }
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    while let Ok(msg) = rx.try_recv() {
        tracker.handle(msg, &mut progress);
    }
    status_task.abort();
    match solved.context("the solve task failed")? {
        Ok(response) => Ok(response
            .into_inner()
            .exporter_response
            .get("containerimage.digest")
            .cloned()
            .unwrap_or_default()),
        Err(status) => Err(BuildFailure {
            error: status.message().to_string(),
            log: tracker.failed_log(),
        }
        .into()),
    }
}

/// Vertex names and output, to report progress and a failing step's log.
#[derive(Default)]
struct Tracker {
    names: BTreeMap<String, String>,
    logs: BTreeMap<String, String>,
    failed: Option<String>,
}

impl Tracker {
    fn handle(&mut self, msg: control::StatusResponse, progress: &mut impl FnMut(Progress)) {
        for v in msg.vertexes {
            self.names.insert(v.digest.clone(), v.name.clone());
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
            } else if v.started.is_some() || v.cached {
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
