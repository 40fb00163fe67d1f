//! `envd prune`: what envd made and nothing uses any more. What goes is decided by a pure
//! function ([`decide`], unit tested) from what the engine lists; the command asks before it
//! removes anything.
//!
//! - the caller's stopped environments (containers envd labelled with the caller's uid; another
//!   user's stopped environment is theirs to remove);
//! - images envd built that no container uses once those are gone (an image another user's
//!   stopped environment uses stays);
//! - envd's helper images (`envd-rs/runtime`, `envd-rs/context`, `envd-rs/host-ca`), which a
//!   build imports again when it needs them;
//! - with `--cache`, the engine's build cache (all of it, or what is older than a duration).
//!
//! Named volumes are never pruned here: `envd down --volumes` removes an environment's.

use std::collections::HashMap;

use anyhow::Context as _;
use bollard::query_parameters::{ListContainersOptions, ListImagesOptions};
use bollard::Docker;
use serde::Serialize;

use crate::contract::{LABEL_NAME, LABEL_OWNER};
use crate::docker::BuiltImage;

/// A container as [`decide`] needs it.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its name.
    pub name: String,
    /// The id of its image.
    pub image_id: String,
    /// `running`, `exited`, `created`, ...
    pub state: String,
    /// The environment's name, when envd made it.
    pub environment: Option<String>,
    /// The uid that made it, when envd made it.
    pub owner: Option<u32>,
}

/// A helper image envd imports for builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Helper {
    /// `envd-rs/runtime:...`.
    pub tag: String,
    /// Its id.
    pub id: String,
}

/// What `envd prune` removes.
#[derive(Debug, Default, Serialize)]
pub struct Plan {
    /// Stopped environments: (environment, container name).
    pub environments: Vec<(String, String)>,
    /// Images envd built that nothing will use.
    pub images: Vec<BuiltImage>,
    /// Helper images nothing uses.
    pub helpers: Vec<Helper>,
}

impl Plan {
    /// Whether there is nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.environments.is_empty() && self.images.is_empty() && self.helpers.is_empty()
    }
}

/// Decides what goes for the user `uid`.
pub fn decide(
    containers: &[Container],
    images: Vec<BuiltImage>,
    helpers: Vec<Helper>,
    uid: u32,
) -> Plan {
    let stopped =
        |c: &&Container| c.environment.is_some() && c.owner == Some(uid) && c.state != "running";
    let going: Vec<&Container> = containers.iter().filter(stopped).collect();
    let staying = |image_id: &str| {
        (containers.iter())
            .filter(|c| !going.iter().any(|g| g.name == c.name))
            .any(|c| c.image_id == image_id)
    };
    Plan {
        environments: (going.iter())
            .map(|c| (c.environment.clone().unwrap_or_default(), c.name.clone()))
            .collect(),
        images: images.into_iter().filter(|i| !staying(&i.id)).collect(),
        helpers: helpers.into_iter().filter(|h| !staying(&h.id)).collect(),
    }
}

/// Lists what is there and decides what goes for the calling user.
pub async fn plan(docker: &Docker) -> anyhow::Result<Plan> {
    let all = ListContainersOptions {
        all: true,
        ..Default::default()
    };
    let listed =
        (docker.list_containers(Some(all)).await).context("cannot list the engine's containers")?;
    let containers: Vec<Container> = listed
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            Container {
                name: (c.names.unwrap_or_default().first())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                image_id: c.image_id.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                environment: labels.get(LABEL_NAME).cloned(),
                owner: labels.get(LABEL_OWNER).and_then(|o| o.parse().ok()),
            }
        })
        .collect();
    let images = crate::docker::built_images(docker).await?;
    let helpers = helper_images(docker).await?;
    Ok(decide(
        &containers,
        images,
        helpers,
        nix::unistd::getuid().as_raw(),
    ))
}

async fn helper_images(docker: &Docker) -> anyhow::Result<Vec<Helper>> {
    let filters = HashMap::from([("reference".to_string(), vec!["envd-rs/*".to_string()])]);
    let options = ListImagesOptions {
        filters: Some(filters),
        ..Default::default()
    };
    let images =
        (docker.list_images(Some(options)).await).context("cannot list the engine's images")?;
    Ok(images
        .into_iter()
        .flat_map(|i| {
            let id = i.id.clone();
            i.repo_tags.into_iter().map(move |tag| Helper {
                tag,
                id: id.clone(),
            })
        })
        .collect())
}

/// Removes what `plan` names; returns what could not be removed, each with the engine's reason
/// (an image a build started using meanwhile, say).
pub async fn apply(docker: &Docker, plan: &Plan) -> Vec<String> {
    use bollard::query_parameters::{RemoveContainerOptions, RemoveImageOptions};
    let mut failed = Vec::new();
    for (_, container) in &plan.environments {
        let options = RemoveContainerOptions {
            force: false,
            ..Default::default()
        };
        if let Err(e) = docker.remove_container(container, Some(options)).await {
            failed.push(format!("container {container}: {e}"));
        }
    }
    // By tag: the engine refuses to remove by id an image that has several tags (an image
    // pushed for a cluster is also tagged with its registry's name); the last tag removed takes
    // the image with it. Untagged images go by id.
    let image_names = (plan.images.iter())
        .flat_map(|i| match i.tags.is_empty() {
            true => vec![i.id.clone()],
            false => i.tags.clone(),
        })
        .chain(plan.helpers.iter().map(|h| h.tag.clone()));
    for image in image_names {
        // Without force: an image a container still uses is refused by the engine, not removed.
        let options = RemoveImageOptions {
            force: false,
            ..Default::default()
        };
        if let Err(e) = docker.remove_image(&image, Some(options), None).await {
            if !crate::docker::is_not_found(&e) {
                failed.push(format!("image {image}: {e}"));
            }
        }
    }
    failed
}

/// Removes the engine's build cache (what is older than `older_than`, a Go duration such as
/// `24h`, when given); returns the bytes reclaimed.
pub async fn build_cache(docker: &Docker, older_than: Option<&str>) -> anyhow::Result<i64> {
    let filters = older_than.map(|d| HashMap::from([("until".to_string(), vec![d.to_string()])]));
    let options = bollard::query_parameters::PruneBuildOptions {
        all: Some(true),
        filters,
        ..Default::default()
    };
    let answer = (docker.prune_build(Some(options)).await)
        .context("the engine did not prune its build cache")?;
    Ok(answer.space_reclaimed.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, image: &str, state: &str, env: Option<(&str, u32)>) -> Container {
        Container {
            name: name.into(),
            image_id: image.into(),
            state: state.into(),
            environment: env.map(|(e, _)| e.into()),
            owner: env.map(|(_, o)| o),
        }
    }

    fn image(id: &str) -> BuiltImage {
        BuiltImage {
            tags: vec![format!("{id}:dev")],
            id: id.into(),
            size: 1,
            created: 0,
            dev: true,
            used_by: vec![],
        }
    }

    #[test]
    fn only_my_stopped_environments_and_what_nothing_else_uses_go() {
        let containers = [
            container("mine.root", "img-mine", "exited", Some(("mine", 0))),
            container(
                "running.root",
                "img-running",
                "running",
                Some(("running", 0)),
            ),
            container("theirs.ada", "img-theirs", "exited", Some(("theirs", 1000))),
            container("plain", "img-plain", "exited", None),
            container("made.root", "img-made", "created", Some(("made", 0))),
        ];
        let images = [
            "img-mine",
            "img-running",
            "img-theirs",
            "img-plain",
            "img-made",
            "img-free",
        ]
        .map(image)
        .to_vec();
        let helpers = vec![
            Helper {
                tag: "envd-rs/runtime:abc".into(),
                id: "rt".into(),
            },
            Helper {
                tag: "envd-rs/context:def".into(),
                id: "img-plain".into(),
            },
        ];
        let plan = decide(&containers, images, helpers, 0);
        let envs: Vec<&str> = plan.environments.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(envs, ["mine", "made"]);
        let ids: Vec<&str> = plan.images.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["img-mine", "img-made", "img-free"]);
        assert_eq!(plan.helpers.len(), 1);
        assert_eq!(plan.helpers[0].tag, "envd-rs/runtime:abc");
        assert!(!plan.is_empty());
        assert!(decide(&[], vec![], vec![], 0).is_empty());
    }
}
