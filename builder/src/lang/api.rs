//! envd's v1 build-file API as Starlark built-ins, with envd's parameter names and defaults.
//! Every call records into the [`Recorder`] held in the evaluator's `extra`.

use std::collections::BTreeMap;

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::dict::UnpackDictEntries;
use starlark::values::list_or_tuple::UnpackListOrTuple;
use starlark::values::none::NoneType;
use starlark::values::Value;

use super::Recorder;
use crate::graph::{
    CondaPackages, Cuda, Download, Expose, FileCopy, GitConfig, Jupyter, Language, Mount, PipIndex,
    PythonInstaller, RunStep, VsCodeServer,
};

fn recorder<'a>(eval: &'a Evaluator) -> anyhow::Result<&'a Recorder> {
    eval.extra
        .and_then(|e| e.downcast_ref::<Recorder>())
        .ok_or_else(|| anyhow::anyhow!("internal error: no build graph to record into"))
}

fn list(v: Option<UnpackListOrTuple<String>>) -> Vec<String> {
    v.map(|l| l.items).unwrap_or_default()
}

fn some_nonempty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_string)
}

/// The universe: `base`, `shell`, `run`, `git_config`, `include`.
#[starlark_module]
pub fn universe(builder: &mut GlobalsBuilder) {
    /// The base image, and whether it is a development environment.
    fn base(
        #[starlark(default = "ubuntu:22.04")] image: &str,
        #[starlark(default = false)] dev: bool,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        let at = eval
            .call_stack_top_location()
            .map(|l| {
                let r = l.resolve();
                format!("{}:{}", r.file, r.span.begin.line + 1)
            })
            .unwrap_or_default();
        let mut g = recorder(eval)?.graph.borrow_mut();
        g.image = image.to_string();
        g.image_at = at;
        g.dev = dev;
        Ok(NoneType)
    }

    /// The interactive shell: bash, zsh or fish.
    fn shell(
        #[starlark(require = pos, default = "bash")] name: &str,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        let shell: envd_shell::Shell = name.parse().map_err(|_| {
            anyhow::anyhow!("shell({name:?}): envd supports \"bash\", \"zsh\" and \"fish\"")
        })?;
        recorder(eval)?.graph.borrow_mut().shell = shell;
        Ok(NoneType)
    }

    /// Commands run at build time, in one `bash -c 'set -euo pipefail ...'`.
    fn run(
        commands: UnpackListOrTuple<String>,
        #[starlark(default = false)] mount_host: bool,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().run.push(RunStep {
            commands: commands.items,
            mount_host,
        });
        Ok(NoneType)
    }

    /// `~/.gitconfig`.
    fn git_config(
        name: Option<&str>,
        email: Option<&str>,
        editor: Option<&str>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().git_config = Some(GitConfig {
            name: some_nonempty(name),
            email: some_nonempty(email),
            editor: some_nonempty(editor),
        });
        Ok(NoneType)
    }

    /// Loads every `*.envd` file of a git repository (or a local directory) and returns its
    /// public globals as a struct.
    fn include<'v>(git: &str, eval: &mut Evaluator<'v, '_, '_>) -> anyhow::Result<Value<'v>> {
        super::include::include(git, eval)
    }
}

/// `install.*`.
pub fn install(builder: &mut GlobalsBuilder) {
    install_languages(builder);
    install_packages(builder);
}

/// `install.*` languages and toolchains.
#[starlark_module]
fn install_languages(builder: &mut GlobalsBuilder) {
    /// Python `version` (default 3.11) as the environment's interpreter, in a venv with pip.
    /// `installer` installs `install.python_packages` at build time: "uv" (default: `uv pip
    /// install`, pip's requirements in a fraction of its time) or "pip" (as envd does).
    fn python(
        #[starlark(default = "3.11")] version: &str,
        #[starlark(default = "uv")] installer: &str,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        if version.starts_with('2') {
            anyhow::bail!("install.python(version={version:?}): Python 2 is not supported");
        }
        let installer = match installer {
            "uv" => PythonInstaller::Uv,
            "pip" => PythonInstaller::Pip,
            other => anyhow::bail!(
                "install.python(installer={other:?}): the installer is \"uv\" or \"pip\""
            ),
        };
        let recorder = recorder(eval)?;
        recorder.add_language(Language::Python {
            version: version.to_string(),
        });
        recorder.graph.borrow_mut().python_installer = installer;
        Ok(NoneType)
    }

    /// Conda through micromamba (`use_mamba`: the `mamba` command as well); packages come from
    /// `install.conda_packages`.
    fn conda(
        #[starlark(default = false)] use_mamba: bool,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?.add_language(Language::Conda { use_mamba });
        Ok(NoneType)
    }

    /// uv with Python `python_version` (default 3.11): `install.python_packages` goes through
    /// `uv pip install`.
    fn uv(
        #[starlark(default = "3.11")] python_version: &str,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?.add_language(Language::Uv {
            python_version: python_version.to_string(),
        });
        Ok(NoneType)
    }

    /// pixi, the conda-ecosystem project manager (`use_pixi_mirror`: its mirror;
    /// `pypi_index`: where PyPI packages come from).
    fn pixi(
        #[starlark(default = false)] use_pixi_mirror: bool,
        pypi_index: Option<&str>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?.add_language(Language::Pixi {
            use_pixi_mirror,
            pypi_index: some_nonempty(pypi_index),
        });
        Ok(NoneType)
    }

    /// R, with packages from `install.r_packages` (CRAN, or `config.cran_mirror`).
    fn r_lang(eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.add_language(Language::R);
        Ok(NoneType)
    }

    /// Julia, with packages from `install.julia_packages`.
    fn julia(eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.add_language(Language::Julia);
        Ok(NoneType)
    }

    /// Rust through rustup (`version`: a toolchain such as "1.80" or "stable"; default stable).
    fn rust(version: Option<&str>, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.add_language(Language::Rust {
            version: some_nonempty(version),
        });
        Ok(NoneType)
    }

    /// Go (`version`, such as "1.22.5"; default the latest the builder knows).
    fn go(version: Option<&str>, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.add_language(Language::Go {
            version: some_nonempty(version),
        });
        Ok(NoneType)
    }

    /// Node.js (`version`, such as "20.11.1"; default the latest the builder knows).
    fn nodejs(version: Option<&str>, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.add_language(Language::NodeJs {
            version: some_nonempty(version),
        });
        Ok(NoneType)
    }
}

/// `install.*` packages, extensions and tools.
#[starlark_module]
fn install_packages(builder: &mut GlobalsBuilder) {
    /// System packages installed with apt-get (`name`: a list of package names).
    fn apt_packages(
        name: Option<UnpackListOrTuple<String>>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?
            .graph
            .borrow_mut()
            .apt_packages
            .extend(list(name));
        Ok(NoneType)
    }

    /// Python packages installed with pip (or uv after `install.uv()`): `name`, a list of
    /// requirement specs; `requirements`, a requirements file of the build context (read at build
    /// time); `local_wheels`, wheel files of the build context.
    fn python_packages(
        name: Option<UnpackListOrTuple<String>>,
        requirements: Option<&str>,
        local_wheels: Option<UnpackListOrTuple<String>>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        let mut g = recorder(eval)?.graph.borrow_mut();
        g.python_packages.extend(list(name));
        if let Some(r) = some_nonempty(requirements) {
            g.python_requirements.push(r);
        }
        g.python_local_wheels.extend(list(local_wheels));
        Ok(NoneType)
    }

    /// Conda packages (needs `install.conda()`): `name` and `channel` lists, or `env_file`,
    /// an environment.yml of the build context (not both).
    fn conda_packages(
        name: Option<UnpackListOrTuple<String>>,
        channel: Option<UnpackListOrTuple<String>>,
        env_file: Option<&str>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        let (names, channels, env_file) = (list(name), list(channel), some_nonempty(env_file));
        if env_file.is_some() && (!names.is_empty() || !channels.is_empty()) {
            anyhow::bail!(
                "install.conda_packages: env_file cannot be combined with name or channel"
            );
        }
        // Whether install.conda() is there too is checked once the program has run: envd
        // accepts the calls in any order.
        let rec = recorder(eval)?;
        rec.graph.borrow_mut().conda_packages.push(CondaPackages {
            names,
            channels,
            env_file,
        });
        Ok(NoneType)
    }

    /// R packages from CRAN (needs `install.r_lang()`).
    fn r_packages(
        name: Option<UnpackListOrTuple<String>>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?
            .graph
            .borrow_mut()
            .r_packages
            .extend(list(name));
        Ok(NoneType)
    }

    /// Julia packages (needs `install.julia()`).
    fn julia_packages(
        name: Option<UnpackListOrTuple<String>>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?
            .graph
            .borrow_mut()
            .julia_packages
            .extend(list(name));
        Ok(NoneType)
    }

    /// CUDA `version` (such as "12.2.0") with cuDNN `cudnn` (default "8"): selects the matching
    /// NVIDIA base image.
    fn cuda(
        #[starlark(require = named)] version: &str,
        #[starlark(require = named, default = "8")] cudnn: &str,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().cuda = Some(Cuda {
            version: version.to_string(),
            cudnn: cudnn.to_string(),
        });
        Ok(NoneType)
    }

    /// Extensions for the VS Code server and desktop Remote-SSH: `publisher.name` (from
    /// open-vsx.org) or a `.vsix` file of the build context (installed offline).
    fn vscode_extensions(
        name: Option<UnpackListOrTuple<String>>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        let names = list(name);
        if let Some(bad) = names.iter().find(|n| {
            !n.ends_with(".vsix")
                && n.split_once('.')
                    .is_none_or(|(p, e)| p.is_empty() || e.is_empty())
        }) {
            anyhow::bail!("install.vscode_extensions: {bad:?} is neither publisher.name nor a .vsix file of the build context");
        }
        recorder(eval)?
            .graph
            .borrow_mut()
            .vscode_extensions
            .extend(names);
        Ok(NoneType)
    }

    /// The OpenAI Codex CLI from npm (`version`; default latest).
    fn codex(version: Option<&str>, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().codex =
            Some(some_nonempty(version).unwrap_or_else(|| "latest".into()));
        Ok(NoneType)
    }
}

/// `config.*`.
pub fn config(builder: &mut GlobalsBuilder) {
    config_sources(builder);
    config_services(builder);
}

/// `config.*`: where packages come from.
#[starlark_module]
fn config_sources(builder: &mut GlobalsBuilder) {
    /// The apt sources list to use instead of the base image's (`source`: its whole text).
    fn apt_source(source: Option<&str>, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().config.apt_source = some_nonempty(source);
        Ok(NoneType)
    }

    /// Where pip installs from: `url` (the index), `extra_url` (a second index) and `trust`
    /// (trust the index's host without TLS verification).
    fn pip_index(
        url: &str,
        extra_url: Option<&str>,
        #[starlark(default = false)] trust: bool,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().config.pip_index = Some(PipIndex {
            url: url.to_string(),
            extra_url: some_nonempty(extra_url),
            trust,
        });
        Ok(NoneType)
    }

    /// The CRAN mirror for `install.r_packages` (`url`).
    fn cran_mirror(url: Option<&str>, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().config.cran_mirror = some_nonempty(url);
        Ok(NoneType)
    }

    /// The Julia package server for `install.julia_packages` (`url`).
    fn julia_pkg_server(url: Option<&str>, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().config.julia_pkg_server = some_nonempty(url);
        Ok(NoneType)
    }
}

/// `config.*`: services, resources and the image.
#[starlark_module]
fn config_services(builder: &mut GlobalsBuilder) {
    /// JupyterLab as the service `jupyter`, published on 127.0.0.1 (`port`: the host port, 0 = a
    /// free one; default 8888); `token` empty means a fresh token per container.
    fn jupyter(
        #[starlark(default = "")] token: &str,
        port: Option<i32>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        let port_given = port.is_some();
        let port = port.unwrap_or(8888);
        if !(0..=65535).contains(&port) {
            anyhow::bail!("config.jupyter(port={port}): not a port number");
        }
        recorder(eval)?.graph.borrow_mut().config.jupyter = Some(Jupyter {
            token: token.to_string(),
            port,
            port_given,
        });
        Ok(NoneType)
    }

    /// VS Code in the browser (code-server) as the service `vscode`, published on 127.0.0.1
    /// (`port`: the host port, 0 = a free one; default 8080) with a fresh password per container.
    fn vscode_server(port: Option<i32>, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        let port_given = port.is_some();
        let port = port.unwrap_or(8080);
        if !(0..=65535).contains(&port) {
            anyhow::bail!("config.vscode_server(port={port}): not a port number");
        }
        recorder(eval)?.graph.borrow_mut().config.vscode = Some(VsCodeServer { port, port_given });
        Ok(NoneType)
    }

    /// The conda channels configuration (`channel`: the text of a .condarc `channels:` list).
    fn conda_channel(channel: Option<&str>, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().config.conda_channel = some_nonempty(channel);
        Ok(NoneType)
    }

    /// GPUs for the environment (`count`: how many; 0 = none, -1 = all).
    fn gpu(#[starlark(default = 0)] count: i32, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().config.gpu = Some(count);
        Ok(NoneType)
    }

    /// The size of /dev/shm in MB (`size`), for data loaders that share memory.
    fn shm_size(size: i32, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        if size <= 0 {
            anyhow::bail!("config.shm_size({size}): the size (in MB) must be positive");
        }
        recorder(eval)?.graph.borrow_mut().config.shm_size = Some(size);
        Ok(NoneType)
    }

    /// RStudio Server as a service of the environment.
    fn rstudio_server(eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().config.rstudio_server = true;
        Ok(NoneType)
    }

    /// The image's entrypoint for a non-dev image (`args`: the command and its arguments).
    fn entrypoint(
        args: UnpackListOrTuple<String>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        // A dev image's entrypoint is envd-init; the compiler reports the conflict, since
        // base(dev=True) may come after this call.
        let rec = recorder(eval)?;
        rec.graph.borrow_mut().config.entrypoint = args.items;
        Ok(NoneType)
    }

    /// The project's repository `url` and `description`, recorded as image labels.
    fn repo(
        url: &str,
        description: Option<&str>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().config.repo =
            Some((url.to_string(), description.unwrap_or_default().to_string()));
        Ok(NoneType)
    }

    /// The user id and group id (`uid`, `gid`) the environment's user and files get.
    fn owner(uid: i32, gid: i32, eval: &mut Evaluator) -> anyhow::Result<NoneType> {
        if !(0..=65535).contains(&uid) || !(0..=65535).contains(&gid) {
            anyhow::bail!("config.owner(uid={uid}, gid={gid}): both must be in 0..65535");
        }
        recorder(eval)?.graph.borrow_mut().config.owner = Some((uid, gid));
        Ok(NoneType)
    }
}

/// `io.*`.
#[starlark_module]
pub fn io(builder: &mut GlobalsBuilder) {
    /// Copies `source` (a path of the build context, or of `image` when given) to `target` in the
    /// image.
    fn copy(
        source: &str,
        target: &str,
        image: Option<&str>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?.graph.borrow_mut().copies.push(FileCopy {
            source: source.to_string(),
            target: target.to_string(),
            image: some_nonempty(image),
        });
        Ok(NoneType)
    }

    /// Downloads `url` into the image (`filename`: its name under ~/extra_source, /extra_source
    /// in a non-dev image; `checksum`: "sha256:<hex>", checked).
    fn http(
        url: &str,
        checksum: Option<&str>,
        filename: Option<&str>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        if let Some(c) = some_nonempty(checksum) {
            if !c.starts_with("sha256:") || c.len() != 71 {
                anyhow::bail!("io.http(checksum={c:?}): expected an OCI digest like \"sha256:<64 hex digits>\"");
            }
        }
        recorder(eval)?.graph.borrow_mut().downloads.push(Download {
            url: url.to_string(),
            checksum: some_nonempty(checksum),
            filename: some_nonempty(filename),
        });
        Ok(NoneType)
    }
}

/// `runtime.*`.
pub fn runtime(builder: &mut GlobalsBuilder) {
    runtime_services(builder);
    runtime_environment(builder);
}

/// `runtime.*`: commands, daemons and ports.
#[starlark_module]
fn runtime_services(builder: &mut GlobalsBuilder) {
    /// Named commands (`commands`: a dict of name to shell command) that
    /// `envd exec --command NAME` runs; `envd describe` lists them.
    fn command(
        commands: Option<UnpackDictEntries<String, String>>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        let mut g = recorder(eval)?.graph.borrow_mut();
        for (k, v) in commands.map(|c| c.entries).unwrap_or_default() {
            g.runtime.commands.insert(k, v);
        }
        Ok(NoneType)
    }

    /// Long-running processes supervised by envd-init (`commands`: a list of argv lists), each
    /// restarted when it exits.
    fn daemon(
        commands: UnpackListOrTuple<UnpackListOrTuple<String>>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        let mut g = recorder(eval)?.graph.borrow_mut();
        for argv in commands.items {
            if argv.items.is_empty() {
                anyhow::bail!("runtime.daemon: an empty command");
            }
            g.runtime.daemons.push(argv.items);
        }
        Ok(NoneType)
    }

    /// Commands run once when the environment starts, before the services (`commands`: a list
    /// of shell commands).
    fn init(
        commands: Option<UnpackListOrTuple<String>>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        recorder(eval)?
            .graph
            .borrow_mut()
            .runtime
            .init
            .extend(list(commands));
        Ok(NoneType)
    }

    /// Publishes `envd_port` of the environment on `host_port` of `listen_addr` (default
    /// 127.0.0.1; `host_port` 0 = a free one), named `service` in `envd describe`.
    fn expose(
        envd_port: i32,
        #[starlark(default = 0)] host_port: i32,
        #[starlark(default = "")] service: &str,
        #[starlark(default = "127.0.0.1")] listen_addr: &str,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        if listen_addr.parse::<std::net::IpAddr>().is_err() {
            anyhow::bail!("runtime.expose(listen_addr={listen_addr:?}): not an IP address");
        }
        for p in [envd_port, host_port] {
            if !(0..=65535).contains(&p) {
                anyhow::bail!("runtime.expose: {p} is not a port number");
            }
        }
        recorder(eval)?
            .graph
            .borrow_mut()
            .runtime
            .expose
            .push(Expose {
                envd_port,
                host_port,
                service: service.to_string(),
                listen_addr: listen_addr.to_string(),
            });
        Ok(NoneType)
    }
}

/// `runtime.*`: variables and mounts.
#[starlark_module]
fn runtime_environment(builder: &mut GlobalsBuilder) {
    /// Variables set in the environment (`env`: a dict) and directories added to PATH
    /// (`extra_path`).
    fn environ(
        env: Option<UnpackDictEntries<String, String>>,
        extra_path: Option<UnpackListOrTuple<String>>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        let mut g = recorder(eval)?.graph.borrow_mut();
        let env: BTreeMap<String, String> = env
            .map(|e| e.entries)
            .unwrap_or_default()
            .into_iter()
            .collect();
        g.runtime.environ.extend(env);
        g.runtime.extra_path.extend(list(extra_path));
        Ok(NoneType)
    }

    /// `runtime.mount(host_path=..., envd_path=...)` bind-mounts a host path;
    /// `runtime.mount(volume=NAME, envd_path=...)` mounts a named volume of the environment's,
    /// which outlives `envd down` (envd-rs's addition).
    fn mount(
        #[starlark(default = "")] host_path: &str,
        #[starlark(default = "")] envd_path: &str,
        #[starlark(default = "")] volume: &str,
        eval: &mut Evaluator,
    ) -> anyhow::Result<NoneType> {
        check_mount(host_path, envd_path, volume)?;
        recorder(eval)?
            .graph
            .borrow_mut()
            .runtime
            .mounts
            .push(Mount {
                host_path: host_path.to_string(),
                envd_path: envd_path.to_string(),
                volume: volume.to_string(),
            });
        Ok(NoneType)
    }
}

/// A mount has a host path or a volume name (a Docker volume name's characters), and an absolute
/// path inside.
fn check_mount(host_path: &str, envd_path: &str, volume: &str) -> anyhow::Result<()> {
    let call = format!(
        "runtime.mount(host_path={host_path:?}, envd_path={envd_path:?}, volume={volume:?})"
    );
    if host_path.is_empty() == volume.is_empty() {
        anyhow::bail!("{call}: give host_path (a host directory) or volume (a named volume), not both or neither");
    }
    if !(envd_path.starts_with('/') || envd_path == "~" || envd_path.starts_with("~/")) {
        anyhow::bail!("{call}: envd_path must be absolute (or start with ~/, the user's home)");
    }
    let valid_volume = volume
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !volume.starts_with(['.', '-']);
    if !valid_volume {
        anyhow::bail!("{call}: a volume name has letters, digits, '_', '.' and '-' only");
    }
    Ok(())
}

/// `data.*`: envd-managed data sources.
#[starlark_module]
pub fn data(builder: &mut GlobalsBuilder) {
    /// An envd-managed data directory on the host (`~/.envd/data/NAME`).
    fn envd(name: &str) -> anyhow::Result<String> {
        if name.is_empty() || name.contains('/') {
            anyhow::bail!("data.envd({name:?}): a data source name has no slashes");
        }
        Ok(format!("~/.envd/data/{name}"))
    }
}

/// `data.path.*`: well-known data directories.
pub fn data_paths(builder: &mut GlobalsBuilder) {
    builder.set("huggingface", "~/.cache/huggingface");
    builder.set("dgl", "~/.dgl");
}
