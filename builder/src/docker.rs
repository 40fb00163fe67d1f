//! The few Docker API calls the builder needs, over the Docker socket: importing the runtime
//! image (the static binaries are larger than BuildKit's 4 MiB request limit, so they reach the
//! build as a local image) and reading an image's labels (no rebuild when nothing changed).

use std::path::Path;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One HTTP/1.1 request on the Docker socket; returns (status, body).
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot connect to the Docker daemon at {}",
            socket.display()
        )
    })?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed answer from the Docker daemon")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status from the Docker daemon")?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = pos + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = &data[(end + 2).min(data.len())..];
    }
    out
}

/// An image's labels, or None when the image does not exist.
pub async fn image_labels(
    socket: &Path,
    image: &str,
) -> anyhow::Result<Option<serde_json::Map<String, serde_json::Value>>> {
    let (status, body) = request(
        socket,
        "GET",
        &format!("/images/{image}/json"),
        b"",
        "application/json",
    )
    .await?;
    match status {
        200 => {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            Ok(Some(
                v["Config"]["Labels"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ))
        }
        404 => Ok(None),
        other => bail!(
            "Docker answered {other} for image {image}: {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

/// The `repo:tag` names of the engine's images, newest first.
pub async fn local_image_tags(socket: &Path) -> anyhow::Result<Vec<String>> {
    let (status, body) = request(socket, "GET", "/images/json", b"", "application/json").await?;
    if status != 200 {
        bail!("Docker answered {status} listing images");
    }
    let mut images: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    images.sort_by_key(|i| std::cmp::Reverse(i["Created"].as_i64().unwrap_or(0)));
    Ok(images
        .iter()
        .flat_map(|i| i["RepoTags"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_string))
        .filter(|t| t != "<none>:<none>" && !t.ends_with(":dev"))
        .collect())
}

/// Makes sure the local image `repo:tag` holds `/envd-init` and `/envd-sshd` from `dir`.
pub async fn ensure_runtime_image(
    socket: &Path,
    dir: &Path,
    repo: &str,
    tag: &str,
) -> anyhow::Result<String> {
    let name = format!("{repo}:{tag}");
    if image_labels(socket, &name).await?.is_some() {
        return Ok(name);
    }
    let mut tar = Vec::new();
    for bin in ["envd-init", "envd-sshd"] {
        let data = std::fs::read(dir.join(bin))
            .with_context(|| format!("cannot read {}", dir.join(bin).display()))?;
        tar_entry(&mut tar, bin, &data, 0o755);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    import_tar(socket, repo, tag, &tar, "the runtime image").await?;
    Ok(name)
}

/// `docker import` of a tar as `repo:tag` (one layer, no config).
async fn import_tar(
    socket: &Path,
    repo: &str,
    tag: &str,
    tar: &[u8],
    what: &str,
) -> anyhow::Result<()> {
    let (status, body) = request(
        socket,
        "POST",
        &format!("/images/create?fromSrc=-&repo={repo}&tag={tag}"),
        tar,
        "application/x-tar",
    )
    .await?;
    if status != 200 || String::from_utf8_lossy(&body).contains("\"error\"") {
        bail!(
            "importing {what} failed ({status}): {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Appends one regular file to a ustar archive.
fn tar_entry(out: &mut Vec<u8>, name: &str, data: &[u8], mode: u32) {
    tar_header(out, name, data.len(), mode, b'0');
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// Appends a symbolic link; ustar holds targets of up to 100 bytes.
fn tar_link(out: &mut Vec<u8>, name: &str, target: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        target.len() <= 100,
        "the link {name} points at a path longer than 100 bytes, which envd cannot carry"
    );
    let start = out.len();
    tar_header(out, name, 0, 0o777, b'2');
    let h = &mut out[start..start + 512];
    h[157..157 + target.len()].copy_from_slice(target.as_bytes());
    // The checksum covers the link name: recompute it.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(())
}

/// Appends one ustar header. Names longer than 100 bytes are split into ustar's prefix (up to
/// 155 bytes, at a `/`) and name fields.
fn tar_header(out: &mut Vec<u8>, name: &str, size: usize, mode: u32, kind: u8) {
    let mut h = [0u8; 512];
    let (prefix, base) = if name.len() <= 100 {
        ("", name)
    } else {
        let cut = name[..name.len().min(156)]
            .rfind('/')
            .filter(|i| name.len() - i - 1 <= 100)
            .unwrap_or(0);
        (&name[..cut], &name[cut + 1..])
    };
    let base = &base.as_bytes()[..base.len().min(100)];
    h[..base.len()].copy_from_slice(base);
    let prefix = &prefix.as_bytes()[..prefix.len().min(155)];
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{:0width$o}\0", v, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size as u64);
    octal(&mut h[136..148], 0);
    h[148..156].copy_from_slice(b"        ");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
}

/// Makes sure the local image carrying the build context's files exists (see [`crate::context`]).
pub async fn ensure_context_image(
    socket: &Path,
    ctx: &crate::context::BuildContext,
) -> anyhow::Result<String> {
    let name = ctx.image();
    if image_labels(socket, &name).await?.is_some() {
        return Ok(name);
    }
    let root = crate::context::ROOT.trim_start_matches('/');
    let mut tar = Vec::with_capacity(ctx.size() + ctx.entries.len() * 1024 + 2048);
    tar_header(&mut tar, root, 0, 0o755, b'5');
    for e in &ctx.entries {
        let path = format!("{root}/{}", e.rel);
        match (&e.data, &e.link) {
            (Some(d), _) => tar_entry(&mut tar, &path, d, e.mode),
            (None, Some(target)) => tar_link(&mut tar, &path, target)?,
            (None, None) => tar_header(&mut tar, &path, 0, e.mode, b'5'),
        }
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let (repo, tag) = name.split_once(':').unwrap_or((&name, "latest"));
    import_tar(socket, repo, tag, &tar, "the build context as an image").await?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_is_readable_by_tar() {
        let mut t = Vec::new();
        tar_entry(&mut t, "hello", b"hi\n", 0o755);
        tar_header(&mut t, "dir", 0, 0o755, b'5');
        tar_link(&mut t, "dir/link", "../hello").unwrap();
        let long = format!("dir/{}/{}", "a".repeat(90), "b".repeat(60));
        tar_entry(&mut t, &long, b"long\n", 0o644);
        t.extend_from_slice(&[0u8; 1024]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.tar"), &t).unwrap();
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
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
