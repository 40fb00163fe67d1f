//! Named volumes: what an environment keeps between `envd down` and `envd up`.
//!
//! Each environment of each host user gets a volume for its home directory's caches
//! ([`CACHE_DIR`]: pip, uv, Hugging Face, ...) and one per `runtime.mount(volume=...)`. They are
//! labelled with the environment and its owner, named after the container, survive `envd down`,
//! and go with `envd down --volumes`.

use std::collections::HashMap;

use anyhow::Context as _;
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{ListVolumesOptions, RemoveVolumeOptions};
use bollard::Docker;

use super::{container_name, owner};
use crate::contract::{CACHE_DIR, LABEL_NAME, LABEL_OWNER, LABEL_VOLUME_PATH};
use crate::graph::Graph;

/// One of an environment's volumes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Volume {
    /// Docker's name for it.
    pub name: String,
    /// Where the environment sees it.
    pub path: String,
    /// Bytes used, when the engine says (it counts on `docker system df`).
    pub size: Option<i64>,
}

/// The volumes an environment mounts: `(key, path inside)`, the cache first.
pub fn wanted(graph: &Graph) -> Vec<(String, String)> {
    let mut out = vec![("cache".to_string(), CACHE_DIR.to_string())];
    for m in graph.runtime.mounts.iter().filter(|m| !m.volume.is_empty()) {
        out.push((m.volume.clone(), super::up::envd_path(&m.envd_path)));
    }
    out
}

/// Docker's name for an environment's volume: `NAME.USER.KEY`.
pub fn volume_name(env: &str, key: &str) -> String {
    format!("{}.{key}", container_name(env))
}

/// Creates the volume unless it exists (Docker's create is idempotent for the same name).
pub async fn ensure(docker: &Docker, env: &str, key: &str, path: &str) -> anyhow::Result<String> {
    let name = volume_name(env, key);
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(HashMap::from([
                (LABEL_NAME.to_string(), env.to_string()),
                (LABEL_OWNER.to_string(), owner().0.to_string()),
                (LABEL_VOLUME_PATH.to_string(), path.to_string()),
            ])),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create the volume {name}"))?;
    Ok(name)
}

/// This user's volumes of environment `env`, with sizes when `sizes` is asked (slower: the
/// engine walks them).
pub async fn list(docker: &Docker, env: &str, sizes: bool) -> anyhow::Result<Vec<Volume>> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_NAME}={env}"),
            format!("{LABEL_OWNER}={}", owner().0),
        ],
    )]);
    let listed = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
        .context("cannot list volumes")?;
    let usage = if sizes {
        volume_sizes().await?
    } else {
        HashMap::new()
    };
    let mut out: Vec<Volume> = listed
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| Volume {
            size: usage.get(&v.name).copied().filter(|s| *s >= 0),
            path: v.labels.get(LABEL_VOLUME_PATH).cloned().unwrap_or_default(),
            name: v.name,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Every volume's size from `GET /system/df`. Read as JSON rather than through bollard's
/// models, which know only the newest engines' layout (`VolumeUsage.Items`); Engine 20.10 (API
/// 1.41) answers with a top-level `Volumes` list.
async fn volume_sizes() -> anyhow::Result<HashMap<String, i64>> {
    Ok(sizes_from_df(
        &crate::docker::get_json("/system/df?type=volume").await?,
    ))
}

fn sizes_from_df(df: &serde_json::Value) -> HashMap<String, i64> {
    let list = df["Volumes"]
        .as_array()
        .or_else(|| df["VolumeUsage"]["Items"].as_array());
    list.into_iter()
        .flatten()
        .filter_map(|v| {
            Some((
                v["Name"].as_str()?.to_string(),
                v["UsageData"]["Size"].as_i64()?,
            ))
        })
        .collect()
}

/// Removes every volume of this user's environment `env`; returns their names.
pub async fn remove_all(docker: &Docker, env: &str) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for v in list(docker, env, false).await? {
        docker
            .remove_volume(&v.name, Some(RemoveVolumeOptions { force: false }))
            .await
            .with_context(|| format!("cannot remove the volume {}", v.name))?;
        removed.push(v.name);
    }
    Ok(removed)
}

/// `1.2 GB`-style sizes.
pub fn human_size(bytes: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_of_old_and_new_engines() {
        let old = serde_json::json!({"Volumes": [{"Name": "a", "UsageData": {"Size": 5, "RefCount": 1}}]});
        let new = serde_json::json!({"VolumeUsage": {"Items": [{"Name": "b", "UsageData": {"Size": -1}}]}});
        assert_eq!(sizes_from_df(&old)["a"], 5);
        assert_eq!(sizes_from_df(&new)["b"], -1);
    }

    #[test]
    fn sizes_read_like_docker_s() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500), "1.5 kB");
        assert_eq!(human_size(2_340_000_000), "2.3 GB");
    }
}
