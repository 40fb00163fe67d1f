//! The Kubernetes objects of an environment, made from its [`EnvSpec`] with no cluster in sight
//! (pure functions, unit tested): a Secret with its tokens and the user's public key, a
//! PersistentVolumeClaim per volume (the working directory's among them) and a bare Pod whose
//! PID 1 is envd-init. Every object carries the same labels as the Docker runner's container, so
//! `envd ls` finds what is ours and nothing else.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    PodSpec, ResourceRequirements, Secret, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::contract::{
    AUTHORIZED_KEYS, ENV_API_TOKEN, ENV_JUPYTER_TOKEN, ENV_VSCODE_PASSWORD, HOST_CA, LABEL_CONTEXT,
    LABEL_NAME, LABEL_OWNER, LABEL_VOLUME_PATH,
};
use crate::env::spec::{EnvSpec, MountSource};

/// The label every object envd makes carries (beside name and owner).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "envd");
/// Annotation of the working directory's claim once the build context was copied in: later
/// `envd up`s never copy over what the user changed.
pub const FILLED: &str = "ai.tensorchord.envd.workdir.filled";
/// Annotation of the pod holding the runtime graph (`runtime.command`s and exposed ports).
pub const RUNTIME: &str = "ai.tensorchord.envd.graph.runtime";
/// Annotation of the pod holding the working directory's path inside.
pub const WORKDIR: &str = "ai.tensorchord.envd.workdir";
/// The environment's container in its pod.
pub const CONTAINER: &str = "envd";
/// The resource name GPUs are asked for by (NVIDIA's device plugin).
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// What a claim asks for when nothing says otherwise.
pub const DEFAULT_VOLUME_SIZE: &str = "10Gi";

/// A Kubernetes object name (DNS-1123 label: lowercase letters, digits and `-`, at most 63,
/// alphanumeric at both ends) for `parts` joined by `-`.
pub fn object_name(parts: &[&str]) -> String {
    let joined = parts.join("-").to_lowercase();
    let mut s: String = joined
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(63);
    s.trim_matches('-').to_string()
}

/// The pod (and secret) of `name` for host user `user`: `NAME-USER`, as Docker's `NAME.USER`.
pub fn pod_name(name: &str, user: &str) -> String {
    object_name(&[name, user])
}

/// The claim holding the working directory.
pub fn workdir_claim(pod: &str) -> String {
    object_name(&[pod, "work"])
}

/// The labels that find an environment's objects: its name and its owner.
pub fn selector(name: &str, owner: u32) -> String {
    format!("{LABEL_NAME}={name},{LABEL_OWNER}={owner}")
}

/// Whether `v` can be a label value (the environment's name is one).
pub fn label_value_ok(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
}

fn labels(name: &str, owner: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), name.to_string()),
        (LABEL_OWNER.to_string(), owner.to_string()),
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
    ])
}

fn meta(object: &str, name: &str, owner: u32, annotations: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(object.to_string()),
        labels: Some(labels(name, owner)),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..Default::default()
    }
}

/// The host's CA bundle the spec mounts (see `spec::host_ca`), read: the node cannot see this
/// machine's file, so it travels in the environment's secret.
pub fn host_ca_bundle(spec: &EnvSpec) -> anyhow::Result<Option<String>> {
    let path = spec.mounts.iter().find_map(|m| match &m.source {
        MountSource::Host(path) if m.target == HOST_CA => Some(path),
        _ => None,
    });
    path.map(|p| {
        std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the CA bundle {}", p.display()))
    })
    .transpose()
}

/// The host's CA bundle's key in the environment's secret.
const HOST_CA_KEY: &str = "host-ca.crt";

/// The secrets of an environment: its tokens and password from the spec's variables, the host
/// user's public key (sshd's `authorized_keys`) and the host's CA bundle.
pub fn secret(
    spec: &EnvSpec,
    owner: u32,
    pod: &str,
    public_key: &str,
    host_ca: Option<&str>,
) -> Secret {
    let mut data = BTreeMap::from([("authorized_keys".to_string(), public_key.to_string())]);
    if let Some(bundle) = host_ca {
        data.insert(HOST_CA_KEY.to_string(), bundle.to_string());
    }
    for key in [ENV_API_TOKEN, ENV_JUPYTER_TOKEN, ENV_VSCODE_PASSWORD] {
        if let Some(v) = spec_var(spec, key) {
            data.insert(key.to_string(), v);
        }
    }
    Secret {
        metadata: meta(pod, &spec.name, owner, BTreeMap::new()),
        string_data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

fn spec_var(spec: &EnvSpec, key: &str) -> Option<String> {
    spec.env
        .iter()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// A claim for one of the environment's volumes; `path` is where it is mounted (kept as an
/// annotation for `envd describe`).
pub fn claim(
    claim: &str,
    name: &str,
    owner: u32,
    path: &str,
    storage_class: Option<&str>,
) -> PersistentVolumeClaim {
    let annotations = BTreeMap::from([(LABEL_VOLUME_PATH.to_string(), path.to_string())]);
    PersistentVolumeClaim {
        metadata: meta(claim, name, owner, annotations),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage_class.map(str::to_string),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(DEFAULT_VOLUME_SIZE.into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A variable of the container: the secrets by reference (never in the pod's spec, which more
/// people can read), the rest as values.
fn env_var(kv: &str, secret_name: &str) -> EnvVar {
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if [ENV_API_TOKEN, ENV_JUPYTER_TOKEN, ENV_VSCODE_PASSWORD].contains(&key) {
        return EnvVar {
            name: key.to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret_name.to_string(),
                    key: key.to_string(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
    }
    EnvVar {
        name: key.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

/// The pod's volumes and the container's mounts: the working directory's claim, the public key
/// from the secret, each named volume's claim, `/dev/shm` in memory. A host directory cannot be
/// mounted: the node is not this machine.
fn volumes(spec: &EnvSpec, pod: &str) -> anyhow::Result<(Vec<Volume>, Vec<VolumeMount>)> {
    let mut volumes = vec![Volume {
        name: "envd-keys".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(pod.to_string()),
            default_mode: Some(0o444),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "envd-keys".into(),
        mount_path: AUTHORIZED_KEYS.into(),
        sub_path: Some("authorized_keys".into()),
        read_only: Some(true),
        ..Default::default()
    }];
    let claim_volume = |name: String, claim: String| Volume {
        name,
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim,
            read_only: None,
        }),
        ..Default::default()
    };
    for (i, m) in spec.mounts.iter().enumerate() {
        let volume = match &m.source {
            MountSource::Host(_) if m.target == spec.workdir => {
                claim_volume("envd-work".into(), workdir_claim(pod))
            }
            MountSource::Host(_) if m.target == AUTHORIZED_KEYS => continue,
            MountSource::Host(_) if m.target == HOST_CA => {
                mounts.push(VolumeMount {
                    name: "envd-keys".into(),
                    mount_path: HOST_CA.into(),
                    sub_path: Some(HOST_CA_KEY.into()),
                    read_only: Some(true),
                    ..Default::default()
                });
                continue;
            }
            MountSource::Host(path) => bail!(
                "{} cannot be mounted at {}: a cluster's node cannot see this machine's files. Use runtime.mount(volume=...) for data the environment keeps",
                path.display(),
                m.target
            ),
            MountSource::Volume(claim) => claim_volume(format!("envd-volume-{i}"), claim.clone()),
        };
        mounts.push(VolumeMount {
            name: volume.name.clone(),
            mount_path: m.target.clone(),
            read_only: m.read_only.then_some(true),
            ..Default::default()
        });
        volumes.push(volume);
    }
    if let Some(bytes) = spec.shm_bytes {
        volumes.push(Volume {
            name: "envd-shm".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity(bytes.to_string())),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "envd-shm".into(),
            mount_path: "/dev/shm".into(),
            ..Default::default()
        });
    }
    Ok((volumes, mounts))
}

/// Resources: `config.gpu` as GPU limits (the scheduler places the pod on a node that has them),
/// `envd up --cpus/--memory` as requests and limits.
fn resources(spec: &EnvSpec) -> Option<ResourceRequirements> {
    let mut limits = BTreeMap::new();
    if let Some(n) = spec.gpus {
        limits.insert(GPU_RESOURCE.to_string(), Quantity(n.to_string()));
    }
    if let Some(cpus) = &spec.cpus {
        limits.insert("cpu".to_string(), Quantity(cpus.clone()));
    }
    if let Some(bytes) = spec.memory_bytes {
        limits.insert("memory".to_string(), Quantity(bytes.to_string()));
    }
    (!limits.is_empty()).then(|| ResourceRequirements {
        requests: Some(limits.clone()),
        limits: Some(limits),
        ..Default::default()
    })
}

/// The environment's pod: one container of the image, envd-init as PID 1 (started as root: it
/// gives the user the host user's ids, re-owns the working directory's volume, then drops to
/// the user for good). `image` is the reference the node pulls; `runtime` the runtime graph.
pub fn pod(spec: &EnvSpec, owner: u32, pod: &str, runtime: &str) -> anyhow::Result<Pod> {
    if !label_value_ok(&spec.name) {
        bail!(
            "the environment name {:?} cannot label Kubernetes objects (letters, digits, '-', '_' and '.', at most 63): choose another with --name",
            spec.name
        );
    }
    let (volumes, mounts) = volumes(spec, pod)?;
    let mut args = spec.args.clone();
    // The working directory is a volume of its own: envd-init re-owns it like the others.
    args.splice(0..0, ["--own".to_string(), spec.workdir.clone()]);
    let annotations = BTreeMap::from([
        (RUNTIME.to_string(), runtime.to_string()),
        (WORKDIR.to_string(), spec.workdir.clone()),
        (
            LABEL_CONTEXT.to_string(),
            spec.labels.get(LABEL_CONTEXT).cloned().unwrap_or_default(),
        ),
    ]);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        env: Some(spec.env.iter().map(|kv| env_var(kv, pod)).collect()),
        working_dir: Some(spec.workdir.clone()),
        ports: Some(
            spec.ports
                .iter()
                .map(|p| ContainerPort {
                    container_port: p.container_port as i32,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        volume_mounts: Some(mounts),
        resources: resources(spec),
        // envd-init must start as root to switch ids; nothing more is asked for: not
        // privileged, the runtime's default capabilities, no host namespaces.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["NET_RAW".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Pod {
        metadata: meta(pod, &spec.name, owner, annotations),
        spec: Some(PodSpec {
            hostname: Some(object_name(&[&spec.name])),
            containers: vec![container],
            volumes: Some(volumes),
            restart_policy: Some("Always".into()),
            // envd-init stops every service in order within its own grace; the pod waits for it.
            termination_grace_period_seconds: Some(15),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::spec::{Mount, Port};
    use std::collections::HashMap;

    fn spec() -> EnvSpec {
        EnvSpec {
            name: "demo".into(),
            image: "127.0.0.1:5000/envd/demo:abc".into(),
            args: vec!["--user-ids".into(), "1000:1000".into()],
            env: vec![
                "ENVD_WORKDIR=/home/envd/demo".into(),
                format!("{ENV_API_TOKEN}=secret-api"),
                format!("{ENV_JUPYTER_TOKEN}=secret-jupyter"),
            ],
            workdir: "/home/envd/demo".into(),
            labels: HashMap::from([(LABEL_CONTEXT.to_string(), "/src/demo".to_string())]),
            ports: vec![Port {
                container_port: 2222,
                host_ip: "127.0.0.1".into(),
                host_port: 0,
            }],
            mounts: vec![
                Mount {
                    source: MountSource::Host("/src/demo".into()),
                    target: "/home/envd/demo".into(),
                    read_only: false,
                },
                Mount {
                    source: MountSource::Host("/root/.config/envd/id.pub".into()),
                    target: AUTHORIZED_KEYS.into(),
                    read_only: true,
                },
                Mount {
                    source: MountSource::Volume("demo-root-cache".into()),
                    target: "/home/envd/.cache".into(),
                    read_only: false,
                },
            ],
            shm_bytes: Some(256 * 1024 * 1024),
            gpus: Some(2),
            cpus: Some("1.5".into()),
            memory_bytes: Some(4 << 30),
            runtime: Default::default(),
        }
    }

    fn container(p: &Pod) -> &Container {
        &p.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(pod_name("My_Project", "root"), "my-project-root");
        assert_eq!(workdir_claim("demo-root"), "demo-root-work");
        let long = "x".repeat(80);
        assert_eq!(pod_name(&long, "u").len(), 63);
        assert_eq!(object_name(&["-a.", "b-"]), "a--b");
        assert!(label_value_ok("demo.1_x"));
        assert!(!label_value_ok("-demo") && !label_value_ok("a b") && !label_value_ok(""));
    }

    #[test]
    fn gpus_cpus_and_memory_become_requests_and_limits() {
        let p = pod(&spec(), 0, "demo-root", "{}").unwrap();
        let r = container(&p).resources.clone().unwrap();
        let limits = r.limits.unwrap();
        assert_eq!(limits[GPU_RESOURCE], Quantity("2".into()));
        assert_eq!(limits["cpu"], Quantity("1.5".into()));
        assert_eq!(limits["memory"], Quantity((4u64 << 30).to_string()));
        assert_eq!(r.requests.unwrap(), limits);
        let mut none = spec();
        (none.gpus, none.cpus, none.memory_bytes) = (None, None, None);
        assert!(container(&pod(&none, 0, "demo-root", "{}").unwrap())
            .resources
            .is_none());
    }

    #[test]
    fn the_workdir_and_volumes_are_claims_and_the_key_comes_from_the_secret() {
        let p = pod(&spec(), 0, "demo-root", "{}").unwrap();
        let s = p.spec.as_ref().unwrap();
        let vols = s.volumes.as_ref().unwrap();
        let claim_of = |path: &str| {
            let m = container(&p)
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.mount_path == path)
                .unwrap();
            let v = vols.iter().find(|v| v.name == m.name).unwrap();
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
        };
        assert_eq!(claim_of("/home/envd/demo").unwrap(), "demo-root-work");
        assert_eq!(claim_of("/home/envd/.cache").unwrap(), "demo-root-cache");
        assert_eq!(claim_of(AUTHORIZED_KEYS), None);
        let shm = vols.iter().find(|v| v.name == "envd-shm").unwrap();
        assert_eq!(
            shm.empty_dir.as_ref().unwrap().medium.as_deref(),
            Some("Memory")
        );
        let args = container(&p).args.clone().unwrap();
        assert_eq!(args[..2], ["--own", "/home/envd/demo"]);
    }

    #[test]
    fn a_host_directory_is_refused_by_name() {
        let mut s = spec();
        s.mounts.push(Mount {
            source: MountSource::Host("/data/set".into()),
            target: "/data".into(),
            read_only: true,
        });
        let e = pod(&s, 0, "demo-root", "{}").unwrap_err().to_string();
        assert!(e.contains("/data/set") && e.contains("volume="), "{e}");
    }

    #[test]
    fn labels_find_ours_and_secrets_stay_out_of_the_pod() {
        let p = pod(&spec(), 1234, "demo-u", "{}").unwrap();
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_NAME], "demo");
        assert_eq!(labels[LABEL_OWNER], "1234");
        assert_eq!(labels[MANAGED_BY.0], "envd");
        let text = serde_json::to_string(&p).unwrap();
        assert!(!text.contains("secret-api") && !text.contains("secret-jupyter"));
        let token = container(&p)
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == ENV_API_TOKEN)
            .unwrap();
        let r = token.value_from.as_ref().unwrap().secret_key_ref.as_ref();
        assert_eq!(r.unwrap().name, "demo-u");
        let s = secret(&spec(), 1234, "demo-u", "ssh-ed25519 AAAA", None);
        let data = s.string_data.unwrap();
        assert_eq!(data[ENV_API_TOKEN], "secret-api");
        assert_eq!(data["authorized_keys"], "ssh-ed25519 AAAA");
        let bad = EnvSpec {
            name: "a b".into(),
            ..spec()
        };
        assert!(pod(&bad, 0, "x", "{}").is_err());
    }

    #[test]
    fn the_host_ca_bundle_travels_in_the_secret_and_is_mounted_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca.crt");
        std::fs::write(&bundle, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let mut with_ca = spec();
        with_ca.mounts.push(Mount {
            source: MountSource::Host(bundle),
            target: HOST_CA.into(),
            read_only: true,
        });
        let ca = host_ca_bundle(&with_ca).unwrap();
        assert_eq!(ca.as_deref(), Some("-----BEGIN CERTIFICATE-----\n"));
        let s = secret(&with_ca, 0, "demo-u", "ssh-ed25519 AAAA", ca.as_deref());
        assert_eq!(s.string_data.unwrap()[HOST_CA_KEY], ca.unwrap());
        let p = pod(&with_ca, 0, "demo-u", "{}").unwrap();
        let mounts = container(&p).volume_mounts.clone().unwrap();
        let m = mounts.iter().find(|m| m.mount_path == HOST_CA).unwrap();
        assert_eq!(
            (m.name.as_str(), m.sub_path.as_deref(), m.read_only),
            ("envd-keys", Some(HOST_CA_KEY), Some(true))
        );
        assert_eq!(host_ca_bundle(&spec()).unwrap(), None);
    }

    #[test]
    fn envd_init_starts_as_root_unprivileged_without_a_service_account() {
        let p = pod(&spec(), 0, "demo-root", "{}").unwrap();
        let sc = container(&p).security_context.clone().unwrap();
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.privileged, Some(false));
        let s = p.spec.unwrap();
        assert_eq!(s.automount_service_account_token, Some(false));
        assert_eq!(s.restart_policy.as_deref(), Some("Always"));
    }
}
