//! The Python environment of an image: the venv, made by a step of its own so that a changed
//! package list does not make it again (creating a venv with pip takes seconds), JupyterLab in a
//! step of its own when `config.jupyter` needs it (it is most of such a venv, and a change to
//! the program's packages then leaves its layer alone), then one step that installs every
//! package, requirements file and local wheel of the program.
//!
//! The installer is uv unless the program asks for pip (`install.python(installer="pip")`) or
//! has conda: `uv pip install` takes pip's arguments and requirements files, and installs from
//! its cache in a fraction of pip's time (docs/BENCHMARKS.md, the build section). uv comes from
//! a pinned wheel that BuildKit downloads beside the other steps and checks by its digest; it is
//! mounted into the install step only, so the image holds the venv, with pip, and no uv.

use super::{python_version, quote, Graph, Language};
use crate::build_context;
use crate::contract::USER_IDS;
use crate::graph::PythonInstaller;

/// Where pip's and uv's downloads are cached between builds (a cache mount).
pub(super) const PIP_CACHE: &str = "/var/cache/envd-pip";

/// The uv release the builder installs with.
pub const UV_VERSION: &str = "0.13.9";
/// Its manylinux x86_64 wheel on PyPI, and the wheel's SHA-256 (PyPI's own digest).
pub(super) const UV_WHEEL_URL: &str = "https://files.pythonhosted.org/packages/3d/aa/26d64642d808de4a652579ef950d7cd2d37f080a8babf9c67c6b75fc4c3f/uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";
pub(super) const UV_WHEEL_SHA256: &str =
    "sha256:d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19";
/// The wheel's file name in its HTTP source, and where the install step sees it.
pub(super) const UV_WHEEL_FILE: &str = "uv.whl";
pub(super) const UV_WHEEL_MOUNT: &str = "/tmp/envd-uv.whl";
/// Where the install step unpacks uv (removed when the step ends).
const UV_UNPACKED: &str = "/tmp/envd-uv";

/// The command that installs the Python packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Installer {
    /// uv from the pinned wheel, mounted for the step.
    UvWheel,
    /// The uv `install.uv()` put in the venv (the user asked for uv in the environment).
    UvInEnvironment,
    /// The environment's pip (asked for, or conda's environment).
    Pip,
}

impl Installer {
    /// The installer a program gets.
    pub(super) fn of(g: &Graph, conda: bool) -> Installer {
        if g.languages.iter().any(|l| matches!(l, Language::Uv { .. })) {
            Installer::UvInEnvironment
        } else if conda || g.python_installer == PythonInstaller::Pip {
            Installer::Pip
        } else {
            Installer::UvWheel
        }
    }

    /// Whether the step mounts the uv wheel.
    pub(super) fn needs_wheel(self) -> bool {
        self == Installer::UvWheel
    }

    /// The install command line, up to the packages.
    fn command(self, prefix: &str) -> String {
        let uv_flags = format!(
            "pip install --python {prefix}/bin/python --cache-dir {PIP_CACHE} --link-mode copy"
        );
        match self {
            // Bytecode as pip compiles it, so the first import in a new container (JupyterLab's
            // start) does not compile it again.
            Installer::UvWheel => format!("{UV_UNPACKED}/uv {uv_flags} --compile-bytecode"),
            Installer::UvInEnvironment => format!("{prefix}/bin/uv {uv_flags} --compile-bytecode"),
            Installer::Pip => format!("{prefix}/bin/pip install --cache-dir {PIP_CACHE}"),
        }
    }

    /// How the progress display names the step.
    fn label(self) -> &'static str {
        match self {
            Installer::UvWheel | Installer::UvInEnvironment => "uv pip install",
            Installer::Pip => "pip install",
        }
    }
}

/// JupyterLab, when `config.jupyter` needs it and the program does not install it itself.
pub(super) fn jupyter_package(g: &Graph) -> Option<&'static str> {
    let listed = g
        .python_packages
        .iter()
        .any(|p| p.starts_with("jupyterlab"));
    (g.config.jupyter.is_some() && !listed).then_some("jupyterlab")
}

/// `config.pip_index` as pip's and uv's variables. uv would take a package from the first index
/// that has it; pip takes the best version from all of them, which uv does when told.
pub(super) fn index_env(g: &Graph) -> Vec<String> {
    let Some(ix) = &g.config.pip_index else {
        return Vec::new();
    };
    let mut env = vec![
        format!("PIP_INDEX_URL={}", ix.url),
        format!("UV_INDEX_URL={}", ix.url),
    ];
    if let Some(extra) = &ix.extra_url {
        env.push(format!("PIP_EXTRA_INDEX_URL={extra}"));
        env.push(format!("UV_EXTRA_INDEX_URL={extra}"));
        env.push("UV_INDEX_STRATEGY=unsafe-best-match".into());
    }
    if ix.trust {
        if let Some(host) = ix.url.split("://").nth(1).and_then(|r| r.split('/').next()) {
            env.push(format!("PIP_TRUSTED_HOST={host}"));
            env.push(format!("UV_INSECURE_HOST={host}"));
        }
    }
    env
}

/// The venv step: check the version, create the venv (with pip, and uv when `install.uv()`),
/// hand it to the user. None when conda's environment holds Python.
pub(super) fn venv_script(
    g: &Graph,
    prefix: &str,
    conda: bool,
    installer: Installer,
) -> Option<String> {
    if conda {
        return None;
    }
    let check = match python_version(g) {
        Some(v) => format!(
            "have=$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'); case \"$have\" in {v}|{v}.*) ;; *) echo \"note: Python {v} was asked; the base image has Python $have, which is used\" >&2 ;; esac; "
        ),
        None => String::new(),
    };
    let uv = if installer == Installer::UvInEnvironment {
        format!(" && {prefix}/bin/pip install --cache-dir {PIP_CACHE} uv")
    } else {
        String::new()
    };
    let (uid, gid) = USER_IDS;
    Some(format!(
        "set -e; {check}python3 -m venv {prefix}{uv} && chown -R {uid}:{gid} {prefix} && chmod -R g+w {prefix}"
    ))
}

/// What the venv step is called.
pub(super) fn venv_label(prefix: &str) -> String {
    format!("python3 -m venv {prefix}")
}

/// The install steps' scripts and names: JupyterLab first when `config.jupyter` asks for it
/// (a step of its own, as envd installs Jupyter, so a change to the program's packages
/// reinstalls only those and not JupyterLab's hundred), then every package, requirements file
/// and local wheel of the program. Empty when there is nothing to install. What a step installs
/// is group-writable and the user's (the venv's earlier files are already: `find` touches only
/// the new ones, so unchanged files are not copied up into the step's layer).
pub(super) fn install_steps(g: &Graph, prefix: &str, installer: Installer) -> Vec<InstallStep> {
    let command = installer.command(prefix);
    let in_image = |p: &String| quote(&build_context::BuildContext::path_in_image(p));
    let mut steps = Vec::new();
    if let Some(jupyter) = jupyter_package(g) {
        let install = format!("{command} {jupyter}");
        steps.push(install_script(
            prefix,
            installer,
            &[install],
            &[jupyter.into()],
            false,
        ));
    }
    let mut installs = Vec::new();
    if !g.python_packages.is_empty() {
        let quoted: Vec<String> = g.python_packages.iter().map(|p| quote(p)).collect();
        installs.push(format!("{command} {}", quoted.join(" ")));
    }
    for r in &g.python_requirements {
        installs.push(format!("{command} -r {}", in_image(r)));
    }
    if !g.python_local_wheels.is_empty() {
        let wheels: Vec<String> = g.python_local_wheels.iter().map(in_image).collect();
        installs.push(format!("{command} {}", wheels.join(" ")));
    }
    if !installs.is_empty() {
        let mut what = g.python_packages.clone();
        what.extend(g.python_requirements.iter().map(|r| format!("-r {r}")));
        what.extend(g.python_local_wheels.iter().cloned());
        let reads_context = !g.python_requirements.is_empty() || !g.python_local_wheels.is_empty();
        steps.push(install_script(
            prefix,
            installer,
            &installs,
            &what,
            reads_context,
        ));
    }
    steps
}

/// A Python install step.
pub(super) struct InstallStep {
    /// What the step runs (`sh -c`).
    pub script: String,
    /// How the progress display names it.
    pub name: String,
    /// Whether it reads requirements files or wheels from the build context (only such a step
    /// mounts the context, so the context's files are not part of the others' cache keys).
    pub reads_context: bool,
}

/// One install step: uv unpacked if it comes from the wheel, the `installs` command lines, the
/// new files handed to the user.
fn install_script(
    prefix: &str,
    installer: Installer,
    installs: &[String],
    what: &[String],
    reads_context: bool,
) -> InstallStep {
    let unpack = if installer.needs_wheel() {
        format!(
            "trap 'rm -rf {UV_UNPACKED} {UV_UNPACKED}.d' EXIT; python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' {UV_WHEEL_MOUNT} uv-{UV_VERSION}.data/scripts/uv {UV_UNPACKED}.d && mkdir -p {UV_UNPACKED} && mv {UV_UNPACKED}.d/uv-{UV_VERSION}.data/scripts/uv {UV_UNPACKED}/uv && rm -rf {UV_UNPACKED}.d && chmod 0755 {UV_UNPACKED}/uv; "
        )
    } else {
        String::new()
    };
    let (uid, gid) = USER_IDS;
    let script = format!(
        "set -e; umask 002; {unpack}{}; find {prefix} -user 0 -exec chown -h {uid}:{gid} {{}} + && find {prefix} ! -type l ! -perm -020 -exec chmod g+w {{}} +",
        installs.join(" && ")
    );
    let name = format!("{} {}", installer.label(), what.join(" "));
    InstallStep {
        script,
        name,
        reads_context,
    }
}
