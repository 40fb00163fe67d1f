//! The stages of a build, in the order [`super::compile`] calls them. Each appends its steps to
//! one LLB chain; what every run step shares (its PATH, CA variables, toolchain variables) is
//! decided once, in [`Chain::new`] and [`Chain::step_env`].

use anyhow::bail;

use super::{
    base_image, downloads_dir, python, python_prefix, python_version, quote, service_files, sh,
    toolchains, vscode, Compiled, Inputs, DEV_APT_PACKAGES, VENV,
};
use crate::build_context;
use crate::buildkit::llb::{Bind, CacheMount, DirSpec, Files, Llb, State};
use crate::client_files::HOST_CA_FILE;
use crate::contract::{
    CACHE_DIR, HOME, HOST_CA, HOST_CA_VARIABLES, RUNTIME_DIRS, SERVICES_DIR, USER, USER_IDS,
};
use crate::graph::{Graph, Language};

/// What dpkg leaves out of the packages the build installs, as Debian's `-slim` images do:
/// documentation but the copyright files, manual and info pages (a dev image has no `man`),
/// and message translations. Only for the build's own `apt-get install`: the file is removed
/// when the step ends, so what the user installs later is complete.
const SLIM_PATHS: [&str; 6] = [
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];
const SLIM_CONFIG: &str = "/etc/dpkg/dpkg.cfg.d/00envd-build-slim";

/// apt's archives and lists, kept between builds.
fn apt_caches() -> [CacheMount; 2] {
    [
        CacheMount {
            dest: "/var/cache/apt".into(),
            id: "envd-apt-archives".into(),
        },
        CacheMount {
            dest: "/var/lib/apt/lists".into(),
            id: "envd-apt-lists".into(),
        },
    ]
}

/// The image being built: the LLB so far, its last state, and what the stages share.
pub(super) struct Chain<'g> {
    g: &'g Graph,
    llb: Llb,
    state: State,
    /// Where Python lives, when the program wants it.
    python: Option<&'static str>,
    conda: bool,
    /// The build context's files as a state, when the program reads any.
    context_image: Option<State>,
    /// `PATH=...` for every step and the image.
    path_env: String,
    /// The host CA variables for every step (empty without a host CA).
    ca_env: Vec<String>,
    /// Whether the builder has MergeOp: independent parts are then layers of their own.
    merge: bool,
    /// Those layers, merged on top of the chain before the user's `run` steps.
    layers: Vec<State>,
}

/// A directory a layer creates: path, mode, owner.
type Dir = DirSpec<'static>;
/// Directories of the user's home in a layer, with the modes and owners the chain gives them
/// (a merged layer's directories replace the chain's).
const HOME_DIRS: [Dir; 2] = [("/home", 0o755, None), (HOME, 0o755, Some(USER_IDS))];

impl<'g> Chain<'g> {
    /// Starts from the base image.
    pub fn new(g: &'g Graph, ctx: &Inputs) -> anyhow::Result<Self> {
        let mut llb = Llb::default();
        let state = llb.image(&base_image(g));
        let python = python_prefix(g);
        let conda = toolchains::has_conda(g);
        let context_image = match (
            &ctx.context_image,
            build_context::referenced_paths(g).is_empty(),
        ) {
            (_, true) => None,
            (Some(files), false) => Some(llb.client_files(files)),
            (None, false) => {
                bail!("this program reads files from the build context, and no context image was given")
            }
        };
        let mut path: Vec<String> = g.runtime.extra_path.clone();
        path.extend(toolchains::paths(g, HOME));
        if let (Some(prefix), false) = (python, conda) {
            path.push(format!("{prefix}/bin"));
        }
        path.push("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        // Build steps trust what the host trusts (see `Inputs::host_ca`): its bundle is mounted
        // into each step, never written into the image.
        let ca_env = match &ctx.host_ca {
            Some(files) => {
                let from = llb.client_files(files);
                llb.bind_in_every_exec(Bind {
                    from,
                    selector: format!("/{HOST_CA_FILE}"),
                    dest: HOST_CA.into(),
                });
                HOST_CA_VARIABLES.map(|k| format!("{k}={HOST_CA}")).to_vec()
            }
            None => Vec::new(),
        };
        Ok(Self {
            g,
            llb,
            state,
            python,
            conda,
            context_image,
            path_env: format!("PATH={}", path.join(":")),
            ca_env,
            merge: ctx.merge,
            layers: Vec::new(),
        })
    }

    /// Builds a part that does not read the chain: with MergeOp, as a layer of its own on
    /// scratch with `dirs` (so its cache never depends on the chain, and it builds beside it);
    /// without, on the chain.
    fn part(&mut self, dirs: &[Dir], build: impl FnOnce(&mut Llb, State) -> State) {
        if self.merge {
            let base = self.llb.mkdirs(&State::scratch(), dirs);
            let layer = build(&mut self.llb, base);
            self.layers.push(layer);
        } else {
            self.state = build(&mut self.llb, self.state.clone());
        }
    }

    /// A part made of file actions only: one op, so one layer (with MergeOp on scratch after
    /// `dirs`, else on the chain).
    fn file_part(&mut self, dirs: &[Dir], name: &str, fill: impl FnOnce(&mut Files)) {
        let root = if self.merge {
            State::scratch()
        } else {
            self.state.clone()
        };
        let mut files = self.llb.files(&root);
        if self.merge {
            for dir in dirs {
                files.mkdir(*dir, false);
            }
        }
        fill(&mut files);
        let result = files.finish(name);
        if self.merge {
            self.layers.push(result);
        } else {
            self.state = result;
        }
    }

    /// Merges the layers built so far on top of the chain.
    pub fn join_layers(&mut self) {
        if self.layers.is_empty() {
            return;
        }
        let mut all = vec![self.state.clone()];
        all.append(&mut self.layers);
        self.state = self.llb.merge(&all, "merge the environment's layers");
    }

    /// The environment of a build step: PATH, the host CA, `HOME` for the user's steps, and the
    /// toolchains' variables.
    fn step_env(&self, as_user: bool) -> Vec<String> {
        let mut env = vec![self.path_env.clone()];
        env.extend(self.ca_env.iter().cloned());
        if as_user {
            env.push(format!("HOME={HOME}"));
        }
        for (k, v) in toolchains::environment(self.g, HOME) {
            env.push(format!("{k}={v}"));
        }
        env
    }

    /// The build context mounted read-only where package steps read it.
    fn context_binds(&self) -> Vec<Bind> {
        let Some(cs) = &self.context_image else {
            return Vec::new();
        };
        vec![Bind {
            from: cs.clone(),
            selector: build_context::ROOT.into(),
            dest: build_context::ROOT.into(),
        }]
    }

    /// Runs a toolchain step. What the user installs is group-writable (umask 002): at start
    /// the user may have another uid and keeps the image's gid as a group (see `USER_IDS`).
    fn run_step(&mut self, st: toolchains::Step, binds: &[Bind]) {
        let script = if st.as_user {
            format!("umask 002\n{}", st.script)
        } else {
            st.script
        };
        let user = if st.as_user && self.g.dev { USER } else { "" };
        let env = self.step_env(st.as_user);
        let argv = vec!["/bin/bash".into(), "-c".into(), script];
        self.state =
            (self.llb).run_with_binds(&self.state, argv, env, user, &st.caches, binds, &st.name);
    }

    /// The packages apt installs: the dev image's, Python's, the toolchains' and the user's.
    fn apt_packages(&self) -> Vec<String> {
        let g = self.g;
        let mut apt: Vec<String> = Vec::new();
        if g.dev {
            apt.extend(DEV_APT_PACKAGES.iter().map(|p| p.to_string()));
        }
        if self.python.is_some() && !self.conda {
            apt.extend(["python3", "python3-venv", "python3-pip"].map(String::from));
        }
        let downloads_something = self.conda
            || !g.downloads.is_empty()
            || (g.languages.iter()).any(|l| !matches!(l, Language::Python { .. }));
        if downloads_something {
            apt.extend(["curl", "ca-certificates", "bzip2"].map(String::from));
        }
        apt.extend(toolchains::apt_packages(g));
        if g.dev && g.config.vscode.is_some() {
            apt.extend(vscode::RUNTIME_PACKAGES.iter().map(|p| p.to_string()));
        }
        apt.extend(g.apt_packages.iter().cloned());
        apt.sort();
        apt.dedup();
        apt
    }

    /// `config.apt_source` and one `apt-get install` of every system package. dpkg does not
    /// sync each file it unpacks (`--force-unsafe-io`): BuildKit commits the step's layer as a
    /// whole, and a step that dies mid-way leaves no layer to be half-written.
    pub fn system_packages(&mut self) {
        if let Some(src) = &self.g.config.apt_source {
            let sources = "/etc/apt/sources.list";
            self.state = (self.llb).mkfile(&self.state, sources, src.as_bytes(), 0o644, None);
        }
        let apt = self.apt_packages();
        if apt.is_empty() {
            return;
        }
        let quoted: Vec<String> = apt.iter().map(|p| quote(p)).collect();
        let slim = SLIM_PATHS.join("\\n");
        let script = format!(
            "set -e; rm -f /etc/apt/apt.conf.d/docker-clean; echo 'Binary::apt::APT::Keep-Downloaded-Packages \"true\";' > /etc/apt/apt.conf.d/00envd-keep-cache; \
             printf '{slim}\\n' > {SLIM_CONFIG}; trap 'rm -f {SLIM_CONFIG}' EXIT; \
             apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-unsafe-io {}",
            quoted.join(" ")
        );
        let name = format!("apt-get install {}", apt.join(" "));
        self.state = (self.llb).run(&self.state, sh(&script), vec![], "", &apt_caches(), &name);
    }

    /// The `envd` user, sudo and the runtime directories (dev images), then the VS Code server,
    /// built in its own chain and copied in before anything that changes more often.
    pub fn user_and_editor_server(&mut self) {
        if !self.g.dev {
            return;
        }
        let script = format!(
            "set -e; other=$(getent passwd {uid} | cut -d: -f1); \
             if [ -n \"$other\" ] && [ \"$other\" != envd ]; then userdel \"$other\"; fi; \
             getent group {gid} >/dev/null || groupadd -g {gid} envd; \
             id -u envd >/dev/null 2>&1 || useradd -m -d {HOME} -u {uid} -g {gid} -s {shell} envd; \
             mkdir -p /etc/sudoers.d && echo 'envd ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/envd && chmod 0440 /etc/sudoers.d/envd; \
             mkdir -p {runtime_dirs} {SERVICES_DIR} {CACHE_DIR} && chown {uid}:{gid} {runtime_dirs} {CACHE_DIR}",
            runtime_dirs = RUNTIME_DIRS.join(" "),
            uid = USER_IDS.0,
            gid = USER_IDS.1,
            shell = self.g.shell.path(),
        );
        let name = "create the envd user";
        self.state = (self.llb).run(&self.state, sh(&script), vec![], "", &[], name);
        if self.g.config.vscode.is_some() {
            let ca_env = self.ca_env.clone();
            let server = vscode::stage(&mut self.llb, &base_image(self.g), &apt_caches(), ca_env);
            let home = vscode::VSCODE_HOME;
            let dirs = [("/opt", 0o755, None), ("/opt/envd", 0o755, None)];
            self.part(&dirs, |llb, on| {
                llb.copy(&on, &server, home, home, None, None)
            });
        }
    }

    /// Miniforge and the conda environment, when conda is installed.
    pub fn conda(&mut self) {
        if !self.conda {
            return;
        }
        let version = python_version(self.g).unwrap_or_else(|| "3.11".into());
        let binds = self.context_binds();
        for st in toolchains::conda_steps(self.g, &version, USER_IDS) {
            self.run_step(st, &binds);
        }
    }

    /// The venv (unless conda has the Python), then JupyterLab when `config.jupyter` asks for
    /// it, then every package, requirements file and local wheel of the program in one step
    /// (see [`python`]).
    pub fn python(&mut self) {
        let Some(prefix) = self.python else { return };
        let installer = python::Installer::of(self.g, self.conda);
        let cache = [CacheMount {
            dest: python::PIP_CACHE.into(),
            id: "envd-pip".into(),
        }];
        if let Some(script) = python::venv_script(self.g, prefix, self.conda, installer) {
            let env = self.step_env(false);
            let name = python::venv_label(prefix);
            // `install.uv()` pip-installs uv here: its download stays in the cache, not the image.
            let caches: &[CacheMount] = match installer {
                python::Installer::UvInEnvironment => &cache,
                _ => &[],
            };
            self.state = (self.llb).run(&self.state, sh(&script), env, "", caches, &name);
        }
        for step in python::install_steps(self.g, prefix, installer) {
            self.python_install(step, installer, &cache);
        }
    }

    /// One Python install step on the chain, with the index's variables, the build context if
    /// it reads it, and the uv wheel if it installs with it.
    fn python_install(
        &mut self,
        step: python::InstallStep,
        installer: python::Installer,
        cache: &[CacheMount],
    ) {
        let mut env = self.step_env(false);
        env.extend(python::index_env(self.g));
        let mut binds = if step.reads_context {
            self.context_binds()
        } else {
            Vec::new()
        };
        if installer.needs_wheel() {
            let wheel = (self.llb).http(
                python::UV_WHEEL_URL,
                Some(python::UV_WHEEL_SHA256),
                Some(python::UV_WHEEL_FILE),
            );
            binds.push(Bind {
                from: wheel,
                selector: format!("/{}", python::UV_WHEEL_FILE),
                dest: python::UV_WHEEL_MOUNT.into(),
            });
        }
        let script = sh(&step.script);
        self.state =
            (self.llb).run_with_binds(&self.state, script, env, "", cache, &binds, &step.name);
    }

    /// Every other toolchain (uv, pixi, R, Julia, Rust, Go, Node.js, ...) and its packages.
    pub fn toolchains(&mut self) {
        for st in toolchains::other_steps(self.g, HOME) {
            let binds = if st.reads_context {
                self.context_binds()
            } else {
                Vec::new()
            };
            self.run_step(st, &binds);
        }
    }

    /// `io.http` downloads, checked by BuildKit against their checksums (a layer of their own in
    /// dev images, where they go to the user's home).
    pub fn downloads(&mut self) {
        let g = self.g;
        if g.downloads.is_empty() {
            return;
        }
        let owner = g.dev.then_some(USER_IDS);
        let build = move |llb: &mut Llb, mut on: State| {
            for d in &g.downloads {
                let name = d
                    .filename
                    .clone()
                    .or_else(|| d.url.rsplit('/').next().map(str::to_string))
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "download".into());
                let src = llb.http(&d.url, d.checksum.as_deref(), Some(&name));
                let dest = format!("{}/{name}", downloads_dir(g));
                on = llb.copy(&on, &src, &format!("/{name}"), &dest, None, owner);
            }
            on
        };
        if g.dev {
            self.part(&HOME_DIRS, build);
        } else {
            self.state = build(&mut self.llb, self.state.clone());
        }
    }

    /// `io.copy` from the build context or another image.
    pub fn copies(&mut self) -> anyhow::Result<()> {
        let g = self.g;
        let owner = g.dev.then_some(USER_IDS);
        for c in &g.copies {
            let (from, src) = match (&c.image, &self.context_image) {
                (Some(image), _) => (self.llb.image(image), c.source.clone()),
                (None, Some(cs)) => (
                    cs.clone(),
                    build_context::BuildContext::path_in_image(&c.source),
                ),
                (None, None) => bail!("io.copy({:?}) needs the build context", c.source),
            };
            let target = if c.target.starts_with('/') {
                c.target.clone()
            } else if g.dev {
                format!("{HOME}/{}", c.target)
            } else {
                format!("/{}", c.target)
            };
            self.state = self
                .llb
                .copy(&self.state, &from, &src, &target, None, owner);
        }
        Ok(())
    }

    /// What makes a dev image an environment: envd-init and envd-sshd, the service files, the
    /// shell's rc files and the git config.
    pub fn dev_runtime(&mut self, ctx: &Inputs) -> anyhow::Result<()> {
        if !self.g.dev {
            return Ok(());
        }
        let Some(runtime) = &ctx.runtime_image else {
            bail!("a development image needs the envd runtime image (envd-init, envd-sshd)");
        };
        let rt = self.llb.client_files(runtime);
        let services: Vec<(String, String)> = service_files(self.g)
            .into_iter()
            .map(|(name, text)| (format!("{SERVICES_DIR}/{name}.toml"), text))
            .collect();
        let mut home_files: Vec<(String, String)> = shell_files(self.g, ctx, self.conda);
        home_files.extend(git_config(self.g));
        home_files.extend(jupyter_settings(self.g));
        let dirs: Vec<Dir> = [
            ("/usr", 0o755, None),
            ("/usr/local", 0o755, None),
            ("/usr/local/bin", 0o755, None),
            ("/etc", 0o755, None),
            ("/etc/envd", 0o755, None),
            (SERVICES_DIR, 0o755, None),
        ]
        .into_iter()
        .chain(HOME_DIRS)
        .collect();
        let name = format!(
            "envd's runtime: envd-init, envd-sshd, {} service and {} home files",
            services.len(),
            home_files.len()
        );
        self.file_part(&dirs, &name, |files| {
            for bin in ["envd-init", "envd-sshd"] {
                let (from, to) = (format!("/{bin}"), format!("/usr/local/bin/{bin}"));
                files.copy(&rt, &from, &to, Some(0o755), None);
            }
            for (path, text) in services {
                files.mkfile(&path, text.as_bytes(), 0o644, None);
            }
            for (path, text) in home_files {
                files.mkfile(&path, text.as_bytes(), 0o644, Some(USER_IDS));
            }
        });
        Ok(())
    }

    /// `run(...)` steps, as the user in dev images; `mount_host` ones see the build context
    /// where `envd up` mounts it.
    pub fn run_steps(&mut self, workdir_name: &str) {
        let g = self.g;
        let workdir = format!("{HOME}/{workdir_name}");
        for (i, step) in g.run.iter().enumerate() {
            let mut script = String::from("set -euo pipefail\n");
            if step.mount_host {
                script.push_str(&format!("cd {}\n", quote(&workdir)));
            }
            script.push_str(&step.commands.join("\n"));
            let user = if g.dev { USER } else { "" };
            let binds: Vec<Bind> = match (&self.context_image, step.mount_host) {
                (Some(cs), true) => vec![Bind {
                    from: cs.clone(),
                    selector: build_context::ROOT.into(),
                    dest: workdir.clone(),
                }],
                _ => vec![],
            };
            let name = format!("run #{}: {}", i + 1, step.commands.join("; "));
            self.state = self.llb.run_with_binds(
                &self.state,
                vec!["/bin/bash".into(), "-c".into(), script],
                self.step_env(g.dev),
                user,
                &[],
                &binds,
                &name,
            );
        }
    }

    /// The definition and the image config.
    pub fn finish(self, ctx: &Inputs) -> anyhow::Result<Compiled> {
        let config = super::image_config(self.g, ctx, &self.path_env)?;
        Ok(Compiled {
            definition: self.llb.definition(&self.state),
            config,
        })
    }
}

/// The shell's rc files in the user's home, with the environment's PATH, variables and Python.
fn shell_files(g: &Graph, ctx: &Inputs, conda: bool) -> Vec<(String, String)> {
    let mut extra_path = g.runtime.extra_path.clone();
    extra_path.extend(toolchains::paths(g, HOME));
    let mut env: Vec<(String, String)> = (g.runtime.environ.iter())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(toolchains::environment(g, HOME));
    let setup = envd_shell::Setup {
        env_name: ctx.env_name.clone(),
        extra_path,
        env,
        venv: (python_prefix(g).is_some() && !conda).then(|| VENV.to_string()),
        conda_env: None,
    };
    envd_shell::home_files(g.shell, &setup)
        .into_iter()
        .map(|f| (format!("{HOME}/{}", f.path.display()), f.content))
        .collect()
}

/// `git_config(...)` as `~/.gitconfig`.
/// JupyterLab's user settings with its news and update checks off: JupyterLab 4 otherwise asks
/// on first open whether to fetch news from the internet. The user's own settings file, so the
/// user can turn them on in JupyterLab's settings editor.
fn jupyter_settings(g: &Graph) -> Option<(String, String)> {
    g.config.jupyter.as_ref()?;
    let path = format!(
        "{HOME}/.jupyter/lab/user-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
    );
    let text = "{\n    // Written by envd: no news or update checks from the internet unless you turn them on.\n    \"fetchNews\": \"false\",\n    \"checkForUpdates\": false\n}\n";
    Some((path, text.to_string()))
}

fn git_config(g: &Graph) -> Option<(String, String)> {
    let gc = g.git_config.as_ref()?;
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
    Some((format!("{HOME}/.gitconfig"), text))
}
