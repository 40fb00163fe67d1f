//! `envd build`: evaluate, compile, and solve on BuildKit, skipping the build when the image
//! already carries this program's hash.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};

use crate::buildkit::connect::{self, Builder};
use crate::buildkit::session::Session;
use crate::buildkit::solve::{self, Progress};
use crate::client_files::ArchiveTo;
use crate::compile::{self, Inputs};
use crate::contract::LABEL_DIGEST;
use crate::graph::Graph;
use crate::lang::{self, Entry};
use crate::{docker, runtime};
use bollard::Docker;

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// The build context.
    pub path: PathBuf,
    /// FILE:FUNCTION.
    pub from: Entry,
    /// Image tag (default `NAME:dev`).
    pub tag: Option<String>,
    /// Build even when the image is up to date.
    pub force: bool,
    /// The environment's name (default: the directory's name).
    pub name: Option<String>,
    /// Where the image goes (`--output`).
    pub output: crate::output::Output,
    /// Where BuildKit is.
    pub builder: Builder,
    /// `HOST[:PORT]` of a registry between a standalone buildkitd and the engine: the image is
    /// pushed there and pulled, so only changed layers travel (without one it is streamed whole
    /// and loaded). Not used with Docker's own BuildKit, which writes to the engine directly.
    pub registry: Option<String>,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The image tag.
    pub tag: String,
    /// The program's hash (image label).
    pub program_hash: String,
    /// Whether the build was skipped because the image was up to date.
    pub up_to_date: bool,
    /// Image digest (empty when skipped).
    pub digest: String,
    /// Wall time.
    pub elapsed: Duration,
    /// The evaluated program.
    pub graph: Graph,
    /// What `--output` did besides the image store (an archive written, a push).
    pub output_note: Option<String>,
}

/// The environment's name: the build context directory's name, lower-cased, with anything but
/// `[a-z0-9_.-]` replaced (it becomes an image and container name).
pub fn env_name(path: &Path) -> String {
    let name: String = workdir_name(path)
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.trim_matches(|c| c == '-' || c == '.').to_string()
}

/// The project directory's own name (not lower-cased): `envd up` mounts the context at
/// `/home/envd/<this>`.
pub fn workdir_name(path: &Path) -> String {
    let abs = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    abs.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "envd".into())
}

/// The sha256 of a runtime binary. Hashing both binaries (7 MB) took half of `envd debug llb`'s
/// time, so the digest is kept in the cache directory under the file's identity (path, device,
/// inode, size, modification time): a rebuilt or replaced binary changes one of them.
fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let identity = format!(
        "{} {} {} {} {}.{}",
        path.display(),
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let key = format!("{:x}", Sha256::digest(identity.as_bytes()));
    let cached = crate::host::cache_dir().join("digests").join(&key[..32]);
    if let Ok(digest) = std::fs::read_to_string(&cached) {
        if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(digest);
        }
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let digest = format!("{:x}", Sha256::digest(&bytes));
    // A cache that cannot be written only costs the next call the hashing again.
    if let Some(dir) = cached.parent() {
        let _ = std::fs::create_dir_all(dir);
        let _ = crate::host::write_file(&cached, digest.as_bytes(), 0o644);
    }
    Ok(digest)
}

/// Hash of everything that decides the image: the evaluated program (so comments and blank
/// lines do not count), the runtime binaries and this builder's version and commit (a builder
/// that compiles differently must not call an older image up to date). Nothing about the host
/// user: every user of a project shares its image.
pub fn program_hash(graph: &Graph, runtime_hash: &str, name: &str) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(graph).unwrap_or_default());
    h.update(runtime_hash.as_bytes());
    h.update(name.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(env!("ENVD_COMMIT").as_bytes());
    format!("{:x}", h.finalize())
}

/// The in-container runtime a dev image gets, as the local image that carries it.
#[derive(Debug, Clone)]
pub struct RuntimeImage {
    /// The directory holding `envd-init` and `envd-sshd`.
    pub dir: PathBuf,
    /// The image's tag: a hash of both binaries.
    pub tag: String,
}

impl RuntimeImage {
    /// The repository the runtime images go to.
    pub const REPOSITORY: &'static str = "envd-rs/runtime";

    /// Finds the runtime binaries and names their image after their content.
    pub fn locate() -> anyhow::Result<Self> {
        let init = runtime::locate("envd-init")?;
        let sshd = runtime::locate("envd-sshd")?;
        let both = format!("{}{}", sha256_file(&init)?, sha256_file(&sshd)?);
        let tag = format!("{:x}", Sha256::digest(both.as_bytes()))[..16].to_string();
        let dir = init.parent().context("runtime dir")?.to_path_buf();
        Ok(Self { dir, tag })
    }

    /// `envd-rs/runtime:<hash>`.
    pub fn name(&self) -> String {
        format!("{}:{}", Self::REPOSITORY, self.tag)
    }
}

/// Everything a build decides before it talks to an engine: the program, its name and hash,
/// the files it reads and its LLB. `envd build` and `envd debug llb` both start here, so the
/// digests `debug llb` prints are the ones a build sends.
pub struct Plan {
    /// The evaluated program.
    pub graph: Graph,
    /// The environment's name.
    pub name: String,
    /// The hash the image is labelled with ([`program_hash`]).
    pub program_hash: String,
    /// The runtime binaries (dev images only).
    pub runtime: Option<RuntimeImage>,
    /// The build-context files the program reads.
    pub context: crate::build_context::BuildContext,
    /// The host's CA bundle, mounted into every build step ([`crate::host::ca_bundle`]).
    pub host_ca: Option<PathBuf>,
    /// The LLB and image config.
    pub compiled: compile::Compiled,
}

/// What the builder can do, which decides how a plan is compiled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuilderFeatures {
    /// The runtime binaries and context files travel in the build's session (a standalone
    /// buildkitd) rather than as engine images (Docker's BuildKit).
    pub session: bool,
    /// MergeOp (BuildKit >= 0.10): independent parts become layers of their own.
    pub merge: bool,
}

/// Evaluates, collects and compiles the program at `path` (`name` defaults to the directory's)
/// for a builder with `features`.
pub fn plan(
    path: &Path,
    from: &Entry,
    name: Option<&str>,
    features: BuilderFeatures,
) -> anyhow::Result<Plan> {
    let graph = lang::evaluate(path, from)?;
    let name = name.map_or_else(|| env_name(path), str::to_string);
    let runtime = graph.dev.then(RuntimeImage::locate).transpose()?;
    let runtime_tag = runtime.as_ref().map_or("", |r| r.tag.as_str());
    let context = crate::build_context::collect(path, &graph)?;
    let hash = program_hash(&graph, &format!("{runtime_tag}{}", context.hash), &name);
    let (runtime_files, context_files) =
        crate::client_files::sources(features.session, runtime.as_ref(), &context);
    let host_ca = crate::host::ca_bundle()?;
    let host_ca_files = crate::client_files::host_ca_source(features.session, host_ca.as_deref());
    let compiled = compile::compile(
        &graph,
        &Inputs {
            env_name: name.clone(),
            runtime_image: runtime_files,
            program_hash: hash.clone(),
            host_ca: host_ca_files,
            context_image: context_files,
            merge: features.merge,
            workdir_name: workdir_name(path),
        },
    )?;
    Ok(Plan {
        graph,
        name,
        program_hash: hash,
        runtime,
        context,
        host_ca,
        compiled,
    })
}

/// Which exporter `--output` needs on this builder, and where an archive it streams goes.
fn exporter(opts: &Options) -> (solve::Exporter, Option<ArchiveTo>) {
    use crate::output::Output;
    use solve::Exporter;
    match (&opts.builder, &opts.output) {
        (Builder::Moby(_), _) => (Exporter::Moby, None),
        (_, Output::Image { push: true, .. }) => {
            let push = Exporter::Image {
                push: true,
                uncompressed: false,
            };
            (push, None)
        }
        // Through the registry the context names, layers as plain tar: it is next to the engine.
        _ if registry_to_engine(opts).is_some() => {
            let push = Exporter::Image {
                push: true,
                uncompressed: true,
            };
            (push, None)
        }
        // The engine runs what `envd up` starts: the image is loaded into it.
        (_, Output::Image { push: false, .. }) => {
            let archive = Exporter::Archive {
                oci: false,
                uncompressed: true,
            };
            (archive, Some(ArchiveTo::Engine))
        }
        (_, Output::Docker { dest, .. }) => (
            Exporter::Archive {
                oci: false,
                uncompressed: false,
            },
            Some(ArchiveTo::File(dest.clone())),
        ),
        (_, Output::Oci { dest, .. }) => (
            Exporter::Archive {
                oci: true,
                uncompressed: false,
            },
            Some(ArchiveTo::File(dest.clone())),
        ),
    }
}

/// Runs a build.
pub async fn build(
    opts: &Options,
    mut progress: impl FnMut(Progress) + Send,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    if let (Builder::Moby(_), Some(registry)) = (&opts.builder, &opts.registry) {
        bail!(
            "--registry {registry} is for a unix or tcp builder: Docker's own BuildKit (moby-worker) writes images into the engine directly"
        );
    }
    let features = BuilderFeatures {
        session: !matches!(opts.builder, Builder::Moby(_)),
        merge: connect::has_merge_op(&opts.builder).await,
    };
    let plan = plan(&opts.path, &opts.from, opts.name.as_deref(), features)?;
    let tag = opts
        .tag
        .clone()
        .unwrap_or_else(|| format!("{}:dev", plan.name));
    let tag = opts.output.name(&tag).to_string();
    // It imports the runtime and context images, which can take minutes for a large context.
    let docker = docker::connect_for_transfers().await?;
    let outcome = |up_to_date: bool, digest: String, output_note| Outcome {
        tag: tag.clone(),
        program_hash: plan.program_hash.clone(),
        up_to_date,
        digest,
        elapsed: started.elapsed(),
        graph: plan.graph.clone(),
        output_note,
    };

    if !opts.force && image_is_current(&docker, &tag, &plan.program_hash).await? {
        let note = crate::output::finish(&opts.output, &tag).await?;
        return Ok(outcome(true, String::new(), note));
    }
    let solved = if features.session {
        solve_standalone(opts, &plan, &tag, &mut progress).await
    } else {
        if let Some(r) = &plan.runtime {
            docker::ensure_runtime_image(&docker, &r.dir, RuntimeImage::REPOSITORY, &r.tag).await?;
        }
        if !plan.context.is_empty() {
            docker::ensure_context_image(&docker, &plan.context).await?;
        }
        if let Some(bundle) = &plan.host_ca {
            docker::ensure_host_ca_image(&docker, bundle).await?;
        }
        solve_plan(
            opts,
            &plan,
            &tag,
            solve::Exporter::Moby,
            None,
            &mut progress,
        )
        .await
    };
    let (digest, exporter) = match solved {
        Ok(done) => done,
        Err(e) => return Err(base_image_error(&docker, &plan.graph, e).await),
    };
    let note = if exporter == solve::Exporter::Moby {
        crate::output::finish(&opts.output, &tag).await?
    } else {
        None
    };
    Ok(outcome(false, digest, note))
}

/// A build on a standalone buildkitd: the plan's files travel in a session, and an archive the
/// exporter streams back is loaded into the engine or written where `--output` says.
async fn solve_standalone(
    opts: &Options,
    plan: &Plan,
    tag: &str,
    progress: &mut (impl FnMut(Progress) + Send),
) -> anyhow::Result<(String, solve::Exporter)> {
    let (exporter, archive_to) = exporter(opts);
    let via_registry = registry_to_engine(opts).map(|host| registry_reference(host, tag));
    let channel = connect::connect(&opts.builder).await?;
    let (archive, received) = match archive_to {
        Some(to) => {
            let (chunks, task) = crate::client_files::receive_archive(to);
            (Some(chunks), Some(task))
        }
        None => (None, None),
    };
    let dirs = crate::client_files::session_dirs(plan)?;
    let session = Session::open(channel, dirs, archive).await?;
    let name = via_registry.as_deref().unwrap_or(tag);
    let solved = solve_plan(opts, plan, name, exporter, Some(session.id()), progress).await;
    // Closing the session ends the archive's stream if the export never started it.
    drop(session);
    let solved = solved?;
    if let Some(reference) = &via_registry {
        // With Docker's BuildKit behind the address the image is in the engine already.
        let pull = solved.1 != solve::Exporter::Moby;
        into_engine(reference, tag, pull, progress).await?;
    }
    match received {
        // Docker's BuildKit behind the address exported with `moby`: no archive came.
        Some(task) if solved.1 == solve::Exporter::Moby => task.abort(),
        Some(task) => task.await.context("the archive task failed")??,
        None => {}
    }
    Ok(solved)
}

/// The registry a standalone buildkitd's image goes through to reach the engine: the one asked
/// for, when the image is for the engine (not pushed elsewhere or written to a file).
fn registry_to_engine(opts: &Options) -> Option<&str> {
    let for_engine = matches!(
        opts.output,
        crate::output::Output::Image { push: false, .. }
    );
    opts.registry.as_deref().filter(|_| for_engine)
}

/// Where an image tagged `tag` (`NAME:TAG`, perhaps with a registry of its own) goes in the
/// context's registry `host`.
fn registry_reference(host: &str, tag: &str) -> String {
    let path = tag.rsplit_once('/').map_or(tag, |(_, last)| last);
    let tagged = if path.contains(':') { "" } else { ":latest" };
    format!("{host}/envd/{path}{tagged}")
}

/// Pulls `reference` from the context's registry into the engine (only the layers it lacks
/// travel), names it `tag` and drops the registry's name.
async fn into_engine(
    reference: &str,
    tag: &str,
    pull: bool,
    progress: &mut (impl FnMut(Progress) + Send),
) -> anyhow::Result<()> {
    let docker = docker::connect_for_transfers().await?;
    let step = format!("pulling {reference} into the engine");
    progress(Progress::Started {
        name: step.clone(),
        cached: false,
    });
    if pull {
        let layers = docker::pull(&docker, reference).await?;
        progress(Progress::Log {
            name: step.clone(),
            text: format!("{layers} new layers\n"),
        });
    }
    docker::rename(&docker, reference, tag).await?;
    progress(Progress::Completed {
        name: step,
        error: None,
    });
    Ok(())
}

/// Solves the plan's LLB on the builder and exports it as `tag`; returns the image digest and the
/// exporter that made it.
async fn solve_plan(
    opts: &Options,
    plan: &Plan,
    tag: &str,
    exporter: solve::Exporter,
    session: Option<&str>,
    progress: &mut (impl FnMut(Progress) + Send),
) -> anyhow::Result<(String, solve::Exporter)> {
    let channel = connect::connect(&opts.builder).await?;
    let (definition, config) = (&plan.compiled.definition, &plan.compiled.config);
    let export = solve::Export {
        tag,
        exporter,
        session,
    };
    let first = solve::build_image(
        channel.clone(),
        definition.clone(),
        config.clone(),
        export.clone(),
        &mut *progress,
    )
    .await;
    match first {
        // A unix/tcp address can lead to Docker's BuildKit, which has only its own exporter.
        Err(e)
            if exporter != solve::Exporter::Moby
                && matches!(e.downcast_ref(), Some(solve::Refusal::UnknownExporter(_))) =>
        {
            let moby = solve::Exporter::Moby;
            let export = solve::Export {
                exporter: moby,
                ..export
            };
            let digest = solve::build_image(
                channel,
                definition.clone(),
                config.clone(),
                export,
                progress,
            )
            .await?;
            Ok((digest, moby))
        }
        other => Ok((other?, exporter)),
    }
}

/// Whether `tag` exists and carries this program's hash.
async fn image_is_current(docker: &Docker, tag: &str, hash: &str) -> anyhow::Result<bool> {
    let labels = docker::image_labels(docker, tag).await?;
    Ok(labels.is_some_and(|l| l.get(LABEL_DIGEST).map(String::as_str) == Some(hash)))
}

/// A failed build whose base image the engine does not have is most likely that image: say
/// which it is, where the build file chose it, and which images could be used instead. A
/// registry that wants a login is said as such first.
async fn base_image_error(docker: &Docker, graph: &Graph, e: anyhow::Error) -> anyhow::Error {
    if let Some(hint) = crate::registry_auth::refusal_hint(&format!("{e:#}")) {
        return anyhow::anyhow!("{hint}.\nBuildKit said: {e:#}");
    }
    let image = compile::base_image(graph);
    if !matches!(docker::image_labels(docker, &image).await, Ok(None)) {
        return e;
    }
    let chosen = if graph.image_at.is_empty() {
        "envd's default for base()".to_string()
    } else if image != graph.image {
        format!("install.cuda with base(...) at {}", graph.image_at)
    } else {
        format!("base(image={:?}) at {}", graph.image, graph.image_at)
    };
    let mut have = docker::local_image_tags(docker).await.unwrap_or_default();
    have.retain(|t| !t.starts_with("envd-rs/"));
    let suggestion = match have.first() {
        Some(t) => format!("base(image={t:?}, dev=True)"),
        None => "base(image=...) with an image you have pulled or imported".to_string(),
    };
    anyhow::anyhow!(
        "the base image {image} ({chosen}) is not in the Docker engine and could not be pulled. \
         Use {suggestion}{}.\nBuildKit said: {e:#}",
        if have.is_empty() {
            String::new()
        } else {
            format!(
                "; the engine has: {}",
                have.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
            )
        }
    )
}

/// The progress display: live spinners on a terminal, plain lines otherwise (CI logs, pipes).
/// `ENVD_PROGRESS=plain` forces plain lines.
pub fn progress_display() -> Box<dyn FnMut(Progress) + Send> {
    use std::io::IsTerminal;
    let plain = std::env::var("ENVD_PROGRESS").as_deref() == Ok("plain");
    if !plain && std::io::stdout().is_terminal() {
        let mut tty = TtyProgress::default();
        Box::new(move |p| tty.show(p))
    } else {
        Box::new(print_progress)
    }
}

/// One spinner per running step; finished steps become lines above them.
#[derive(Default)]
struct TtyProgress {
    bars: indicatif::MultiProgress,
    running: std::collections::HashMap<String, (indicatif::ProgressBar, Instant)>,
}

impl TtyProgress {
    fn show(&mut self, p: Progress) {
        match p {
            Progress::Started { name, cached: true } => {
                let _ = self.bars.println(format!("[cached] {name}"));
            }
            Progress::Started {
                name,
                cached: false,
            } => {
                if self.running.contains_key(&name) {
                    return;
                }
                let bar = self.bars.add(indicatif::ProgressBar::new_spinner());
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} [{elapsed:>4}] {prefix} {wide_msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.set_prefix(name.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                self.running.insert(name, (bar, Instant::now()));
            }
            Progress::Completed { name, error } => {
                let took = match self.running.remove(&name) {
                    Some((bar, started)) => {
                        bar.finish_and_clear();
                        self.bars.remove(&bar);
                        format!(" ({:.1}s)", started.elapsed().as_secs_f64())
                    }
                    None => String::new(),
                };
                let _ = self.bars.println(match error {
                    None => format!("[done]   {name}{took}"),
                    Some(e) => format!("[failed] {name}{took}: {e}"),
                });
            }
            Progress::Log { name, text } => {
                if let (Some((bar, _)), Some(line)) = (
                    self.running.get(&name),
                    text.lines().rev().find(|l| !l.trim().is_empty()),
                ) {
                    bar.set_message(line.trim().to_string());
                }
            }
        }
    }
}

/// Prints progress as plain lines (CI logs and terminals alike).
pub fn print_progress(p: Progress) {
    match p {
        Progress::Started { name, cached: true } => crate::say!("[cached] {name}"),
        Progress::Started {
            name,
            cached: false,
        } => crate::say!("[run]    {name}"),
        Progress::Completed { name, error: None } => crate::say!("[done]   {name}"),
        Progress::Completed {
            name,
            error: Some(e),
        } => crate::say!("[failed] {name}: {e}"),
        Progress::Log { text, .. } => {
            for line in text.lines() {
                crate::say!("         {line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_directories() {
        assert_eq!(env_name(Path::new("/tmp/My Project")), "my-project");
        assert_eq!(env_name(Path::new("/x/quickstart")), "quickstart");
    }

    #[test]
    fn an_image_goes_through_the_registry_under_its_last_path_part_and_tag() {
        let host = "127.0.0.1:5000";
        assert_eq!(
            registry_reference(host, "demo:dev"),
            "127.0.0.1:5000/envd/demo:dev"
        );
        assert_eq!(
            registry_reference(host, "registry.example:443/team/demo:v2"),
            "127.0.0.1:5000/envd/demo:v2"
        );
        assert_eq!(
            registry_reference(host, "demo"),
            "127.0.0.1:5000/envd/demo:latest"
        );
    }
}
