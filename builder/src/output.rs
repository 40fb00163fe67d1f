//! `envd build --output`: where the image goes.
//!
//! - `type=image[,name=NAME][,push=true]`: the engine's image store (the default), optionally
//!   pushed to its registry;
//! - `type=docker,dest=FILE[,name=NAME]`: a `docker load`-able archive;
//! - `type=oci,dest=FILE[,name=NAME]`: an OCI image layout in a tar.
//!
//! On Docker's BuildKit the build always lands in the engine first (its `moby` exporter); the
//! archive and the push are then made through the Docker API, so no BuildKit file-sync session
//! is needed. A standalone buildkitd has no engine behind it: there `type=image` uses BuildKit's
//! `image` exporter (with `push`), and the archive types are refused.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

/// Where the image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The image store (and a registry with `push`).
    Image {
        /// Image name (default: the tag).
        name: Option<String>,
        /// Push after building.
        push: bool,
    },
    /// A Docker archive at `dest`.
    Docker {
        /// The file.
        dest: PathBuf,
        /// Image name inside the archive.
        name: Option<String>,
    },
    /// An OCI layout tar at `dest`.
    Oci {
        /// The file.
        dest: PathBuf,
        /// The reference name in `index.json`.
        name: Option<String>,
    },
}

impl Default for Output {
    fn default() -> Self {
        Output::Image {
            name: None,
            push: false,
        }
    }
}

impl std::str::FromStr for Output {
    type Err = String;

    /// Parses `type=image|docker|oci,name=...,dest=...,push=true`.
    fn from_str(s: &str) -> Result<Output, String> {
        let mut fields = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected KEY=VALUE"))?;
            if fields.insert(k.trim(), v.trim()).is_some() {
                return Err(format!("{k} is given twice"));
            }
        }
        let kind = fields.remove("type").unwrap_or("image");
        let name = fields.remove("name").map(str::to_string);
        let dest = fields.remove("dest").map(PathBuf::from);
        let push = match fields.remove("push") {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return Err(format!("push={v}: expected true or false")),
        };
        if let Some(k) = fields.keys().next() {
            return Err(format!(
                "unknown output field {k:?} (known: type, name, dest, push)"
            ));
        }
        match kind {
            "image" => {
                if dest.is_some() {
                    return Err("type=image takes no dest".into());
                }
                Ok(Output::Image { name, push })
            }
            "docker" | "oci" => {
                let dest = dest.ok_or_else(|| format!("type={kind} needs dest=FILE"))?;
                if push {
                    return Err(format!("type={kind} cannot push; use type=image,push=true"));
                }
                Ok(if kind == "docker" {
                    Output::Docker { dest, name }
                } else {
                    Output::Oci { dest, name }
                })
            }
            other => Err(format!(
                "unknown output type {other:?} (image, docker or oci)"
            )),
        }
    }
}

impl Output {
    /// The image name the build is exported under.
    pub fn name<'a>(&'a self, tag: &'a str) -> &'a str {
        match self {
            Output::Image { name, .. } | Output::Docker { name, .. } | Output::Oci { name, .. } => {
                name.as_deref().unwrap_or(tag)
            }
        }
    }
}

/// Completes the output once the image is in the engine: push it, or write the archive.
pub async fn finish(output: &Output, name: &str) -> anyhow::Result<Option<String>> {
    match output {
        Output::Image { push: false, .. } => Ok(None),
        Output::Image { push: true, .. } => {
            let docker = crate::docker::connect_for_transfers().await?;
            crate::docker::push_reference(&docker, name).await?;
            Ok(Some(format!("pushed {name}")))
        }
        Output::Docker { dest, .. } => {
            save(name, dest).await?;
            Ok(Some(format!("wrote {} (docker load -i)", dest.display())))
        }
        Output::Oci { dest, .. } => {
            let tmp = dest.with_extension("docker-archive.tmp");
            save(name, &tmp).await?;
            let result = docker_archive_to_oci(&tmp, dest, name);
            let _ = std::fs::remove_file(&tmp);
            result?;
            Ok(Some(format!("wrote {} (OCI layout)", dest.display())))
        }
    }
}

/// `docker save` through the API, to a file.
async fn save(name: &str, dest: &Path) -> anyhow::Result<()> {
    let docker = crate::docker::connect_for_transfers().await?;
    let mut file =
        std::fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut stream = docker.export_image(name);
    while let Some(chunk) = stream.next().await {
        file.write_all(&chunk.with_context(|| format!("cannot export {name}"))?)?;
    }
    file.sync_all()?;
    Ok(())
}

#[derive(serde::Deserialize)]
struct SavedManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Rewrites a `docker save` archive as an OCI image layout (uncompressed layers).
pub fn docker_archive_to_oci(src: &Path, dest: &Path, name: &str) -> anyhow::Result<()> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(
        std::fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?,
    );
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.insert(path, data);
    }
    let manifest: Vec<SavedManifest> = serde_json::from_slice(
        files
            .get("manifest.json")
            .context("the docker archive has no manifest.json")?,
    )?;
    let saved = manifest
        .first()
        .context("the docker archive holds no image")?;
    let config = files
        .get(&saved.config)
        .with_context(|| format!("the docker archive lacks {}", saved.config))?;
    let mut blobs: Vec<(String, &[u8])> = vec![(digest(config), config)];
    let mut layers = Vec::new();
    for l in &saved.layers {
        let data = files
            .get(l)
            .with_context(|| format!("the docker archive lacks {l}"))?;
        let d = digest(data);
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": d,
            "size": data.len(),
        }));
        blobs.push((d, data));
    }
    let oci_manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(config),
            "size": config.len(),
        },
        "layers": layers,
    }))?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&oci_manifest),
            "size": oci_manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    }))?;
    blobs.push((digest(&oci_manifest), &oci_manifest));
    let out =
        std::fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(out));
    let mut add = |path: &str, data: &[u8]| -> anyhow::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, data)?;
        Ok(())
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    let mut seen = std::collections::HashSet::new();
    for (d, data) in blobs {
        if seen.insert(d.clone()) {
            add(&format!("blobs/sha256/{}", &d[7..]), data)?;
        }
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_with_clear_errors() {
        assert_eq!("".parse::<Output>().unwrap(), Output::default());
        assert_eq!(
            "type=image,name=r/x:1,push=true".parse::<Output>().unwrap(),
            Output::Image {
                name: Some("r/x:1".into()),
                push: true
            }
        );
        assert_eq!(
            "type=oci,dest=/tmp/x.tar".parse::<Output>().unwrap(),
            Output::Oci {
                dest: "/tmp/x.tar".into(),
                name: None
            }
        );
        assert!("type=docker"
            .parse::<Output>()
            .unwrap_err()
            .contains("needs dest"));
        assert!("type=tar,dest=x"
            .parse::<Output>()
            .unwrap_err()
            .contains("unknown output type"));
        assert!("type=image,colour=red"
            .parse::<Output>()
            .unwrap_err()
            .contains("colour"));
        assert_eq!(
            crate::docker::split_tag("localhost:5000/a/b:t"),
            ("localhost:5000/a/b", "t")
        );
        assert_eq!(
            crate::docker::split_tag("localhost:5000/a/b"),
            ("localhost:5000/a/b", "latest")
        );
    }
}
