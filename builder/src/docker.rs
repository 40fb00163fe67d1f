//! The one Docker client of the host side, through `bollard`: connecting (with the engine's own
//! API version), the images a build reads and writes (labels, tags, the runtime and build-context
//! images, imported as tars made with `tar`), the containers `envd up` inspects, and the one
//! engine answer bollard's models cannot read on Engine 20.10 (volume sizes).
//!
//! The runtime binaries and context files reach BuildKit as local images because a BuildKit
//! request is limited to 4 MiB and Docker's embedded BuildKit has no file session here.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context as _};
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::{InspectContainerOptions, ListImagesOptions};
use bollard::Docker;
use futures_util::StreamExt;

use crate::contract::{LABEL_DEV, LABEL_DIGEST};

/// Connects to the Docker engine (`DOCKER_HOST` or `/var/run/docker.sock`) and agrees on an API
/// version, so an older engine (Debian's 20.10 speaks 1.41) is spoken to in its own version.
pub async fn connect() -> anyhow::Result<Docker> {
    let socket = crate::buildkit::connect::docker_socket();
    let unreachable = |e: DockerError| {
        anyhow::anyhow!(
            "cannot reach the Docker engine at {socket}: {e}. Is dockerd running (and may you use its socket)?"
        )
    };
    let docker = Docker::connect_with_unix(&socket, 120, bollard::API_DEFAULT_VERSION)
        .map_err(unreachable)?;
    docker.negotiate_version().await.map_err(unreachable)
}

/// How long a transfer may take: an image load, save, push or import, or a followed log, lasts as
/// long as its data (the default client gives up on any request after 120 s, which a large
/// image's load through a slow export exceeds).
const TRANSFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A client for transfers ([`TRANSFER_TIMEOUT`]).
pub async fn connect_for_transfers() -> anyhow::Result<Docker> {
    Ok(connect().await?.with_timeout(TRANSFER_TIMEOUT))
}

/// Whether an engine error says the object does not exist.
pub fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// An image's labels, or None when the image does not exist.
pub async fn image_labels(
    docker: &Docker,
    image: &str,
) -> anyhow::Result<Option<HashMap<String, String>>> {
    match docker.inspect_image(image).await {
        Ok(i) => Ok(Some(i.config.and_then(|c| c.labels).unwrap_or_default())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot inspect the image {image}")),
    }
}

/// The id of a local image.
pub async fn image_id(docker: &Docker, tag: &str) -> anyhow::Result<String> {
    let image = docker.inspect_image(tag).await;
    let image = image.with_context(|| format!("cannot inspect the image {tag}"))?;
    Ok(image.id.unwrap_or_default())
}

/// The `repo:tag` names of the engine's images, newest first (envd's own `:dev` images left out).
pub async fn local_image_tags(docker: &Docker) -> anyhow::Result<Vec<String>> {
    let mut images = docker
        .list_images(None::<ListImagesOptions>)
        .await
        .context("cannot list the engine's images")?;
    images.sort_by_key(|i| std::cmp::Reverse(i.created));
    Ok(images
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .filter(|t| t != "<none>:<none>" && !t.ends_with(":dev"))
        .collect())
}

/// An image envd built, as `envd images` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuiltImage {
    /// Its `repo:tag` names.
    pub tags: Vec<String>,
    /// The image id (`sha256:...`).
    pub id: String,
    /// Size in bytes.
    pub size: i64,
    /// When it was made (Unix seconds).
    pub created: i64,
    /// Whether it is a development environment's image (`dev=True`).
    pub dev: bool,
    /// The containers (running or stopped) made from it.
    pub used_by: Vec<String>,
}

/// The images envd built (they carry the program-hash label), newest first, with the
/// containers that use each.
pub async fn built_images(docker: &Docker) -> anyhow::Result<Vec<BuiltImage>> {
    use bollard::query_parameters::ListContainersOptions;
    let filters = HashMap::from([("label".to_string(), vec![LABEL_DIGEST.to_string()])]);
    let options = ListImagesOptions {
        filters: Some(filters),
        ..Default::default()
    };
    let images =
        (docker.list_images(Some(options)).await).context("cannot list the engine's images")?;
    let all = ListContainersOptions {
        all: true,
        ..Default::default()
    };
    let containers =
        (docker.list_containers(Some(all)).await).context("cannot list the engine's containers")?;
    let mut built: Vec<BuiltImage> = images
        .into_iter()
        .map(|i| BuiltImage {
            used_by: (containers.iter())
                .filter(|c| c.image_id.as_deref() == Some(i.id.as_str()))
                .flat_map(|c| c.names.iter().flatten())
                .map(|n| n.trim_start_matches('/').to_string())
                .collect(),
            tags: i
                .repo_tags
                .into_iter()
                .filter(|t| t != "<none>:<none>")
                .collect(),
            dev: i.labels.get(LABEL_DEV).is_some_and(|v| v == "true"),
            id: i.id,
            size: i.size,
            created: i.created,
        })
        .collect();
    built.sort_by_key(|i| std::cmp::Reverse(i.created));
    Ok(built)
}

/// Makes sure the local image `repo:tag` holds `/envd-init` and `/envd-sshd` from `dir`.
pub async fn ensure_runtime_image(
    docker: &Docker,
    dir: &Path,
    repo: &str,
    tag: &str,
) -> anyhow::Result<String> {
    let name = format!("{repo}:{tag}");
    if image_labels(docker, &name).await?.is_some() {
        return Ok(name);
    }
    let mut tar = tar_builder();
    for bin in ["envd-init", "envd-sshd"] {
        let path = dir.join(bin);
        let data =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        append_file(&mut tar, bin, &data, 0o755)?;
    }
    import_tar(docker, repo, tag, tar.into_inner()?, "the runtime image").await?;
    Ok(name)
}

/// Makes sure the local image carrying the build context's files exists (see [`crate::build_context`]).
pub async fn ensure_context_image(
    docker: &Docker,
    ctx: &crate::build_context::BuildContext,
) -> anyhow::Result<String> {
    let name = ctx.image();
    if image_labels(docker, &name).await?.is_some() {
        return Ok(name);
    }
    let root = crate::build_context::ROOT.trim_start_matches('/');
    let mut tar = tar_builder();
    append_dir(&mut tar, root, 0o755)?;
    for e in &ctx.entries {
        let path = format!("{root}/{}", e.rel);
        match (&e.data, &e.link) {
            (Some(d), _) => append_file(&mut tar, &path, d, e.mode)?,
            (None, Some(target)) => append_link(&mut tar, &path, target)?,
            (None, None) => append_dir(&mut tar, &path, e.mode)?,
        }
    }
    let (repo, tag) = name.split_once(':').unwrap_or((&name, "latest"));
    let tar = tar.into_inner()?;
    import_tar(docker, repo, tag, tar, "the build context as an image").await?;
    Ok(name)
}

/// Makes sure [`HOST_CA_IMAGE`](crate::client_files::HOST_CA_IMAGE) holds the CA bundle at
/// `bundle` (re-imported when the bundle changed: the image is labelled with its hash).
pub async fn ensure_host_ca_image(docker: &Docker, bundle: &Path) -> anyhow::Result<()> {
    use crate::client_files::{HOST_CA_FILE, HOST_CA_IMAGE};
    let data = std::fs::read(bundle)
        .with_context(|| format!("cannot read the CA bundle {}", bundle.display()))?;
    let hash = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&data));
    let current = image_labels(docker, HOST_CA_IMAGE).await?;
    if current.and_then(|l| l.get(LABEL_CONTENT).cloned()) == Some(hash.clone()) {
        return Ok(());
    }
    let mut tar = tar_builder();
    append_file(&mut tar, HOST_CA_FILE, &data, 0o644)?;
    let (repo, tag) = HOST_CA_IMAGE.split_once(':').expect("a tagged name");
    let label = format!("{LABEL_CONTENT}={hash}");
    let what = "the host's CA bundle as an image";
    import_tar_with(docker, repo, tag, tar.into_inner()?, what, vec![label]).await
}

/// The label of an imported image that names its content.
const LABEL_CONTENT: &str = "envd-rs.content";

/// Loads a one-layer image of the files in `layer` (a tar) as `repo:tag`.
async fn import_tar(
    docker: &Docker,
    repo: &str,
    tag: &str,
    tar: Vec<u8>,
    what: &str,
) -> anyhow::Result<()> {
    import_tar_with(docker, repo, tag, tar, what, Vec::new()).await
}

/// [`import_tar`] with `labels` (`KEY=VALUE`) on the image.
///
/// The image goes in as `docker save`'s archive with a fixed configuration (creation time 0), not
/// through `docker import`, which stamps the time: so the same files always make the same image
/// id. Concurrent builds each make sure a helper image exists; with `docker import` the last one
/// moved the tag to a new id, which changed the cache key of every step that uses the image
/// (measured: the apt step of a build ran again on Engine 26 after a concurrent build imported
/// the host-CA image). Now the tag stays on the same image.
async fn import_tar_with(
    docker: &Docker,
    repo: &str,
    tag: &str,
    tar: Vec<u8>,
    what: &str,
    labels: Vec<String>,
) -> anyhow::Result<()> {
    let archive = image_archive(&format!("{repo}:{tag}"), &tar, &labels)?;
    let options = bollard::query_parameters::ImportImageOptions {
        quiet: true,
        ..Default::default()
    };
    let mut progress = docker.import_image(options, bollard::body_full(archive.into()), None);
    while let Some(item) = progress.next().await {
        let info = item.with_context(|| format!("loading {what} failed"))?;
        if let Some(e) = info.error_detail.and_then(|d| d.message) {
            bail!("loading {what} failed: {e}");
        }
    }
    Ok(())
}

/// `docker save`'s archive of one image: `name`, one layer, `labels`, created at time 0.
fn image_archive(name: &str, layer: &[u8], labels: &[String]) -> anyhow::Result<Vec<u8>> {
    use sha2::Digest as _;
    let diff_id = format!("{:x}", sha2::Sha256::digest(layer));
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": engine_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": { "Labels": labels },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    }))?;
    let config_name = format!("{:x}.json", sha2::Sha256::digest(&config));
    let layer_name = format!("{diff_id}/layer.tar");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [name],
        "Layers": [layer_name],
    }]))?;
    let mut archive = tar_builder();
    append_file(&mut archive, &config_name, &config, 0o644)?;
    append_file(&mut archive, &layer_name, layer, 0o644)?;
    append_file(&mut archive, "manifest.json", &manifest, 0o644)?;
    Ok(archive.into_inner()?)
}

/// The engine's name for this machine's architecture (the helper images are data, but the
/// engine checks the platform of what it runs and BuildKit of what it resolves).
fn engine_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// A tar of files owned by root with time 0: the same files give the same archive.
fn tar_builder() -> tar::Builder<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    b
}

fn header(kind: tar::EntryType, size: usize, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Appends one regular file (long names through GNU's long-name entries).
fn append_file(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    data: &[u8],
    mode: u32,
) -> anyhow::Result<()> {
    let mut h = header(tar::EntryType::Regular, data.len(), mode);
    tar.append_data(&mut h, name, data)
        .with_context(|| format!("cannot add {name} to the image's tar"))
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32) -> anyhow::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0, mode);
    tar.append_data(&mut h, name, std::io::empty())
        .with_context(|| format!("cannot add {name} to the image's tar"))
}

/// Appends a symbolic link (targets of any length).
fn append_link(tar: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) -> anyhow::Result<()> {
    let mut h = header(tar::EntryType::Symlink, 0, 0o777);
    tar.append_link(&mut h, name, target)
        .with_context(|| format!("cannot add the link {name} to the image's tar"))
}

/// The parts of a container `envd up` decides on.
pub struct ContainerInfo {
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Whether it runs.
    pub running: bool,
    /// The image id it was created from.
    pub image_id: String,
}

/// Inspects the container called `name`, if any.
pub async fn container_info(docker: &Docker, name: &str) -> anyhow::Result<Option<ContainerInfo>> {
    match docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
    {
        Ok(c) => Ok(Some(ContainerInfo {
            labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
            running: c.state.and_then(|s| s.running).unwrap_or(false),
            image_id: c.image.unwrap_or_default(),
        })),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e).context("cannot inspect the container"),
    }
}

/// Runs `cmd` in container `id` as `user` with `env`, and collects exit code, stdout and stderr.
pub async fn exec_capture(
    docker: &Docker,
    id: &str,
    cmd: &[&str],
    user: &str,
    env: &[String],
    workdir: Option<&str>,
) -> anyhow::Result<(i64, String, String)> {
    let options = CreateExecOptions {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        env: Some(env.iter().map(String::as_str).collect()),
        cmd: Some(cmd.to_vec()),
        working_dir: workdir,
        user: Some(user),
        ..Default::default()
    };
    let exec = (docker.create_exec(id, options).await).context("cannot create the exec")?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await?
    {
        while let Some(chunk) = output.next().await {
            match chunk? {
                bollard::container::LogOutput::StdErr { message } => {
                    err.extend_from_slice(&message)
                }
                other => out.extend_from_slice(&other.into_bytes()),
            }
        }
    }
    let code = docker.inspect_exec(&exec.id).await?.exit_code.unwrap_or(-1);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((code, text(&out), text(&err)))
}

/// A GET on the engine's API answered as JSON, for the answers bollard's models cannot read:
/// Engine 20.10's `/system/df` lists volumes at the top level (`Volumes`), where bollard's
/// models know only the newest engines' `VolumeUsage.Items`. HTTP is hyper's.
pub async fn get_json(path: &str) -> anyhow::Result<serde_json::Value> {
    use http_body_util::BodyExt;
    let socket = crate::buildkit::connect::docker_socket();
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .with_context(|| format!("cannot connect to the Docker daemon at {socket}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("Host", "docker")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "Docker answered {status} for {path}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(serde_json::from_slice(&body)?)
}

/// Tags the local image `image` as `reference` (`HOST/REPO:TAG`) and pushes it (see
/// [`push_reference`]).
pub async fn push(docker: &Docker, image: &str, reference: &str) -> anyhow::Result<()> {
    tag(docker, image, reference).await?;
    push_reference(docker, reference).await
}

/// Pushes the local image `reference` (`HOST/REPO[:TAG]`, `latest` without a tag) with the
/// client's login for the registry, if any; the engine's error (an unreachable or refusing
/// registry) is said with the reference.
pub async fn push_reference(docker: &Docker, reference: &str) -> anyhow::Result<()> {
    use bollard::query_parameters::PushImageOptions;
    let (repo, tag) = split_tag(reference);
    let options = PushImageOptions {
        tag: Some(tag.to_string()),
        ..Default::default()
    };
    let login = crate::registry_auth::engine_credentials(reference)?;
    let mut stream = docker.push_image(repo, Some(options), login);
    while let Some(msg) = stream.next().await {
        let msg = msg.with_context(|| format!("cannot push {reference}"))?;
        if let Some(e) = msg.error_detail.and_then(|d| d.message) {
            bail!("cannot push {reference}: {e}");
        }
    }
    Ok(())
}

/// Pulls `reference` (`HOST/REPO:TAG`) into the engine with the client's login for the
/// registry, if any; returns how many of its layers were downloaded (the others the engine
/// had). The engine's error is said with the reference.
pub async fn pull(docker: &Docker, reference: &str) -> anyhow::Result<usize> {
    use bollard::query_parameters::CreateImageOptions;
    let options = CreateImageOptions {
        from_image: Some(reference.to_string()),
        ..Default::default()
    };
    let login = crate::registry_auth::engine_credentials(reference)?;
    let mut stream = docker.create_image(Some(options), None, login);
    let mut downloaded = 0;
    while let Some(msg) = stream.next().await {
        let msg = msg.with_context(|| format!("cannot pull {reference}"))?;
        if let Some(e) = msg.error_detail.and_then(|d| d.message) {
            bail!("cannot pull {reference}: {e}");
        }
        downloaded += usize::from(msg.status.as_deref() == Some("Pull complete"));
    }
    Ok(downloaded)
}

/// `REPOSITORY[:TAG]` split at the tag's colon (not a registry port's); `latest` without one.
pub fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "latest"),
    }
}

/// Tags the local image `image` as `reference` (`REPOSITORY:TAG`).
pub async fn tag(docker: &Docker, image: &str, reference: &str) -> anyhow::Result<()> {
    use bollard::query_parameters::TagImageOptions;
    let (repo, tag) = reference
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .with_context(|| format!("{reference}: expected REPOSITORY:TAG"))?;
    let tag_options = TagImageOptions {
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
    };
    (docker.tag_image(image, Some(tag_options)).await)
        .with_context(|| format!("cannot tag {image} as {reference}"))
}

/// Gives the image `reference` (`REPOSITORY:TAG`) the name `name` and removes the names it came
/// with: its tag and, after a pull, its digest name (which would keep every earlier image of
/// that repository alive).
pub async fn rename(docker: &Docker, reference: &str, name: &str) -> anyhow::Result<()> {
    let (name_repo, name_tag) = split_tag(name);
    tag(docker, reference, &format!("{name_repo}:{name_tag}")).await?;
    let (repo, _) = split_tag(reference);
    let image = (docker.inspect_image(reference).await)
        .with_context(|| format!("cannot inspect {reference}"))?;
    for by_digest in image.repo_digests.unwrap_or_default() {
        if by_digest.starts_with(&format!("{repo}@")) {
            untag(docker, &by_digest).await?;
        }
    }
    untag(docker, reference).await
}

/// Removes one tag of an image (the image stays under its other names).
pub async fn untag(docker: &Docker, reference: &str) -> anyhow::Result<()> {
    use bollard::query_parameters::RemoveImageOptions;
    let options = RemoveImageOptions {
        noprune: true,
        ..Default::default()
    };
    match docker.remove_image(reference, Some(options), None).await {
        Ok(_) => Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot untag {reference}")),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_same_files_make_the_same_image_archive() {
        let mut layer = tar_builder();
        append_file(&mut layer, "envd-host-ca.crt", b"certificate", 0o644).unwrap();
        let layer = layer.into_inner().unwrap();
        let labels = vec!["envd-rs.content=abc".to_string()];
        let one = image_archive("envd-rs/host-ca:current", &layer, &labels).unwrap();
        let two = image_archive("envd-rs/host-ca:current", &layer, &labels).unwrap();
        assert_eq!(one, two);
        let other = image_archive("envd-rs/host-ca:current", &layer, &[]).unwrap();
        assert_ne!(one, other, "the labels are part of the image");
        // docker save's layout: the config named by its digest, the layer by its diff id.
        let mut names = Vec::new();
        for entry in tar::Archive::new(&one[..]).entries().unwrap() {
            names.push(entry.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names[0].ends_with(".json") && names[1].ends_with("/layer.tar"),
            "{names:?}"
        );
        assert_eq!(names[2], "manifest.json");
    }
    use super::*;

    #[test]
    fn tar_is_readable_by_tar() {
        let mut t = tar_builder();
        append_file(&mut t, "hello", b"hi\n", 0o755).unwrap();
        append_dir(&mut t, "dir", 0o755).unwrap();
        append_link(&mut t, "dir/link", "../hello").unwrap();
        let long = format!("dir/{}/{}", "a".repeat(90), "b".repeat(160));
        append_file(&mut t, &long, b"long\n", 0o644).unwrap();
        let far = format!("../{}", "c".repeat(150));
        append_link(&mut t, "dir/far", &far).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.tar"), t.into_inner().unwrap()).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(dir.path().join("x.tar"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("hello"));
        assert!(listing.contains(&long), "{listing}");
        assert!(listing.contains("drwxr-xr-x"), "{listing}");
        assert!(listing.contains("dir/link -> ../hello"), "{listing}");
        assert!(listing.contains(&format!("dir/far -> {far}")), "{listing}");
    }
}
