//! Waiting for a new pod to run, and saying why it does not: a claim that never binds, an image
//! the node cannot pull, a pod no node can take, a container that keeps failing. Each in the
//! cluster's own words (the scheduler's reason, the kubelet's event text), read as it happens
//! rather than after a long timeout.

use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::Api;

/// How long a claim may stay unbound before `envd up` gives up on it.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(60);

/// The warning events about an object, oldest first, as `REASON: MESSAGE` lines.
pub async fn warnings(events: &Api<Event>, object: &str) -> Vec<String> {
    let lp = ListParams::default().fields(&format!("involvedObject.name={object}"));
    let Ok(list) = events.list(&lp).await else {
        return Vec::new();
    };
    let mut out: Vec<String> = list
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default().trim()
            )
        })
        .collect();
    out.dedup();
    out
}

/// Whether the environment's container runs.
pub fn container_running(pod: &Pod) -> bool {
    container_status(pod)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn container_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

/// A reason the pod will not run without someone acting, from its status alone.
pub fn hopeless(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if let Some(w) = container_status(pod)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
    {
        let reason = w.reason.clone().unwrap_or_default();
        let message = w.message.clone().unwrap_or_default();
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].image.clone());
        match reason.as_str() {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                return Some(format!(
                    "the node cannot pull the image {} ({reason}): {message}",
                    image.unwrap_or_default()
                ))
            }
            "CreateContainerConfigError"
            | "CreateContainerError"
            | "CrashLoopBackOff"
            | "RunContainerError" => return Some(format!("{reason}: {message}")),
            _ => {}
        }
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })?;
    let message = unschedulable.message.clone().unwrap_or_default();
    // Unbound claims are the claims' story (see `claim_trouble`), and may still resolve.
    (!message.contains("unbound")).then(|| format!("no node can run it: {message}"))
}

/// A claim that will not bind: one whose provisioning failed, or still unbound after
/// [`BIND_TIMEOUT`].
async fn claim_trouble(
    claims: &Api<PersistentVolumeClaim>,
    events: &Api<Event>,
    names: &[String],
    waited: Duration,
) -> Option<String> {
    for name in names {
        let Ok(Some(c)) = claims.get_opt(name).await else {
            continue;
        };
        if c.status.and_then(|s| s.phase).as_deref() == Some("Bound") {
            continue;
        }
        let warnings = warnings(events, name).await;
        let failed = warnings.iter().any(|w| w.starts_with("ProvisioningFailed"));
        if failed || waited >= BIND_TIMEOUT {
            let said = if warnings.is_empty() {
                "no event explains it".to_string()
            } else {
                warnings.join("; ")
            };
            return Some(format!(
                "the volume claim {name} is not bound after {}s: {said}",
                waited.as_secs()
            ));
        }
    }
    None
}

/// Waits until the pod's container runs; a named failure as soon as one shows.
pub async fn until_running(
    pods: &Api<Pod>,
    claims: &Api<PersistentVolumeClaim>,
    events: &Api<Event>,
    pod: &str,
    claim_names: &[String],
    timeout: Duration,
) -> anyhow::Result<Pod> {
    let started = Instant::now();
    loop {
        let Some(p) = pods.get_opt(pod).await? else {
            bail!("the pod {pod} disappeared while starting");
        };
        if container_running(&p) {
            return Ok(p);
        }
        if let Some(why) = hopeless(&p) {
            let events = warnings(events, pod).await;
            let events = if events.is_empty() {
                String::new()
            } else {
                format!("\n  events: {}", events.join("\n          "))
            };
            bail!("the pod {pod} cannot start: {why}{events}");
        }
        if let Some(why) = claim_trouble(claims, events, claim_names, started.elapsed()).await {
            bail!("the pod {pod} cannot start: {why}");
        }
        if started.elapsed() >= timeout {
            let events = warnings(events, pod).await.join("; ");
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            bail!(
                "the pod {pod} was not running after {timeout:?} (phase {phase}); events: {events}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodSpec,
        PodStatus,
    };

    fn waiting(reason: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    image: Some("reg/x:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: Some("dial tcp 127.0.0.1:1: connection refused".into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn unschedulable(message: &str) -> Pod {
        Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(message.into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pull_failures_name_the_image_and_the_node_s_words() {
        let why = hopeless(&waiting("ImagePullBackOff")).unwrap();
        assert!(
            why.contains("reg/x:1") && why.contains("connection refused"),
            "{why}"
        );
        assert!(hopeless(&waiting("ContainerCreating")).is_none());
    }

    #[test]
    fn the_scheduler_s_reason_is_given_but_unbound_claims_wait() {
        let why = hopeless(&unschedulable(
            "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
        ));
        assert!(why.unwrap().contains("Insufficient nvidia.com/gpu"));
        let pvc = unschedulable(
            "0/1 nodes are available: 1 pod has unbound immediate PersistentVolumeClaims.",
        );
        assert!(hopeless(&pvc).is_none());
    }
}
