//! Named volumes: what an environment keeps between `envd down` and `envd up`.
//!
//! Each environment of each host user gets a volume for its home directory's caches
//! ([`CACHE_DIR`]: pip, uv, Hugging Face, ...) and one per `runtime.mount(volume=...)`. They are
//! labelled with the environment and its owner, named after the container, survive `envd down`,
//! and go with `envd down --volumes`.

use std::collections::HashMap;

use super::container_name;
use crate::contract::CACHE_DIR;
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
        out.push((m.volume.clone(), super::spec::envd_path(&m.envd_path)));
    }
    out
}

/// Docker's name for an environment's volume: `NAME.USER.KEY`.
pub fn volume_name(env: &str, key: &str) -> String {
    format!("{}.{key}", container_name(env))
}

pub(super) fn sizes_from_df(df: &serde_json::Value) -> HashMap<String, i64> {
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
