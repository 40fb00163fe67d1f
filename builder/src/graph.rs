//! The internal graph: everything a `build.envd` program asked for, in envd v1's terms, before
//! any BuildKit op exists. The Starlark front end ([`crate::lang`]) fills it; the LLB compiler
//! ([`crate::compile`]) lowers it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One `build.envd` program's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Graph {
    /// `base(image=...)`.
    pub image: String,
    /// Where `image` was chosen (`build.envd:3`; empty: envd's default, no `base` call), for
    /// errors. Not part of the build's hash: moving a line does not change the image.
    #[serde(skip)]
    pub image_at: String,
    /// `base(dev=True)`: envd-init, envd-sshd, the user, the prompt.
    pub dev: bool,
    /// `shell(...)`: bash, zsh or fish.
    pub shell: envd_shell::Shell,
    /// Languages (`install.python`, `install.conda`, ...).
    pub languages: Vec<Language>,
    /// `install.apt_packages`.
    pub apt_packages: Vec<String>,
    /// `install.python_packages(name=...)`.
    pub python_packages: Vec<String>,
    /// `install.python_packages(requirements=...)`.
    pub python_requirements: Vec<String>,
    /// `install.python_packages(local_wheels=...)`.
    pub python_local_wheels: Vec<String>,
    /// `install.python(installer=...)`: what installs the Python packages into the venv.
    pub python_installer: PythonInstaller,
    /// `install.conda_packages`.
    pub conda_packages: Vec<CondaPackages>,
    /// `install.r_packages`.
    pub r_packages: Vec<String>,
    /// `install.julia_packages`.
    pub julia_packages: Vec<String>,
    /// `install.cuda(version, cudnn)`.
    pub cuda: Option<Cuda>,
    /// `install.vscode_extensions`.
    pub vscode_extensions: Vec<String>,
    /// `install.codex(version)`.
    pub codex: Option<String>,
    /// `config.*`.
    pub config: Config,
    /// `io.copy`.
    pub copies: Vec<FileCopy>,
    /// `io.http`.
    pub downloads: Vec<Download>,
    /// `run(...)`, in order.
    pub run: Vec<RunStep>,
    /// `git_config`.
    pub git_config: Option<GitConfig>,
    /// `runtime.*`: what the running environment does (stored in an image label).
    pub runtime: Runtime,
}

/// What installs `install.python_packages` into the environment's venv.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PythonInstaller {
    /// `uv pip install` (uv from a pinned wheel, used during the build and not kept in the
    /// image): the same requirements, installed in a fraction of pip's time.
    #[default]
    Uv,
    /// `pip install`, as envd does.
    Pip,
}

/// A language toolchain.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Language {
    /// `install.python(version)`.
    Python {
        /// e.g. "3.11".
        version: String,
    },
    /// `install.conda(use_mamba)`.
    Conda {
        /// Use mamba instead of conda.
        use_mamba: bool,
    },
    /// `install.uv(python_version)`.
    Uv {
        /// The Python uv installs.
        python_version: String,
    },
    /// `install.pixi(use_pixi_mirror, pypi_index)`.
    Pixi {
        /// Use the pixi mirror.
        use_pixi_mirror: bool,
        /// PyPI index for pixi.
        pypi_index: Option<String>,
    },
    /// `install.r_lang()`.
    R,
    /// `install.julia()`.
    Julia,
    /// `install.rust(version)`.
    Rust {
        /// Toolchain version (None: stable).
        version: Option<String>,
    },
    /// `install.go(version)`.
    Go {
        /// Go version.
        version: Option<String>,
    },
    /// `install.nodejs(version)`.
    NodeJs {
        /// Node.js version.
        version: Option<String>,
    },
}

/// `install.conda_packages(...)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CondaPackages {
    /// Package names.
    pub names: Vec<String>,
    /// Channels.
    pub channels: Vec<String>,
    /// An environment file instead of names.
    pub env_file: Option<String>,
}

/// `install.cuda(...)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cuda {
    /// CUDA version.
    pub version: String,
    /// cuDNN version.
    pub cudnn: String,
}

/// `config.*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Config {
    /// `config.apt_source`.
    pub apt_source: Option<String>,
    /// `config.pip_index(url, extra_url, trust)`.
    pub pip_index: Option<PipIndex>,
    /// `config.cran_mirror`.
    pub cran_mirror: Option<String>,
    /// `config.julia_pkg_server`.
    pub julia_pkg_server: Option<String>,
    /// `config.jupyter(token, port)`.
    pub jupyter: Option<Jupyter>,
    /// `config.conda_channel`.
    pub conda_channel: Option<String>,
    /// `config.vscode_server(port)`.
    pub vscode: Option<VsCodeServer>,
    /// `config.gpu(count)`.
    pub gpu: Option<i32>,
    /// `config.shm_size` in MB.
    pub shm_size: Option<i32>,
    /// `config.rstudio_server()`.
    pub rstudio_server: bool,
    /// `config.entrypoint(args)`.
    pub entrypoint: Vec<String>,
    /// `config.repo(url, description)`.
    pub repo: Option<(String, String)>,
    /// `config.owner(uid, gid)`.
    pub owner: Option<(i32, i32)>,
}

/// `config.pip_index`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipIndex {
    /// Index URL.
    pub url: String,
    /// Extra index URL.
    pub extra_url: Option<String>,
    /// Trust the host.
    pub trust: bool,
}

/// `config.jupyter`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Jupyter {
    /// Token; empty means "generate one" (never an open server).
    pub token: String,
    /// Host port; 0 means a free one.
    pub port: i32,
    /// Whether the build file chose `port`. envd's default (8888) gives way to a free port
    /// when another environment (another user's, say) has it; a chosen port never does.
    pub port_given: bool,
}

/// `config.vscode_server`: VS Code in the browser, supervised as the service `vscode`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VsCodeServer {
    /// Host port; 0 means a free one.
    pub port: i32,
    /// Whether the build file chose `port` (else 8080, which gives way to a free port when
    /// taken, as Jupyter's default does).
    pub port_given: bool,
}

/// `io.copy`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileCopy {
    /// Source in the build context (or in `image`).
    pub source: String,
    /// Target in the image.
    pub target: String,
    /// Copy from this image instead of the build context.
    pub image: Option<String>,
}

/// `io.http`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Download {
    /// URL.
    pub url: String,
    /// OCI digest to check.
    pub checksum: Option<String>,
    /// File name under `~/extra_source`.
    pub filename: Option<String>,
}

/// `run(...)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunStep {
    /// Commands, run in one `bash -c 'set -euo pipefail ...'`.
    pub commands: Vec<String>,
    /// Bind-mount the build context.
    pub mount_host: bool,
}

/// `git_config`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GitConfig {
    /// user.name.
    pub name: Option<String>,
    /// user.email.
    pub email: Option<String>,
    /// core.editor.
    pub editor: Option<String>,
}

/// `runtime.*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    /// `runtime.command`: named commands for `envd exec --command`.
    pub commands: BTreeMap<String, String>,
    /// `runtime.daemon`: long-running processes (envd-init services).
    pub daemons: Vec<Vec<String>>,
    /// `runtime.init`: one-shot commands run before the daemons.
    pub init: Vec<String>,
    /// `runtime.expose`.
    pub expose: Vec<Expose>,
    /// `runtime.environ(env)`.
    pub environ: BTreeMap<String, String>,
    /// `runtime.environ(extra_path)`.
    pub extra_path: Vec<String>,
    /// `runtime.mount`.
    pub mounts: Vec<Mount>,
}

/// `runtime.expose`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expose {
    /// Port inside the environment.
    pub envd_port: i32,
    /// Host port (0: a free one).
    pub host_port: i32,
    /// Service name.
    pub service: String,
    /// Host address to publish on.
    pub listen_addr: String,
}

/// `runtime.mount`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    /// Host path (or an envd data source); empty for a named volume.
    pub host_path: String,
    /// Path in the environment.
    pub envd_path: String,
    /// A named volume of the environment's (kept by `envd down`, removed by `--volumes`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub volume: String,
}
