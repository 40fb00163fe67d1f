//! Language toolchains and the packages of each: what `install.conda`, `uv`, `pixi`, `r_lang`,
//! `julia`, `rust`, `go`, `nodejs`, `codex`, `vscode_extensions` and the `*_packages` calls
//! become. Each is a shell step with the download or package manager envd uses, so a build file
//! means the same here as with envd. Where Debian has the toolchain and no version is asked
//! (Node.js), Debian's package is used: it needs no download beyond the apt mirror.

use crate::buildkit::llb::CacheMount;
use crate::graph::{Graph, Language};

/// Where conda (Miniforge) is installed.
pub const CONDA_ROOT: &str = "/opt/conda";
/// The conda environment Python lives in when conda is installed.
pub const CONDA_ENV: &str = "/opt/conda/envs/envd";
/// rustup's and cargo's homes.
pub const RUST_HOME: &str = "/opt/rust";
/// Where Julia is unpacked.
pub const JULIA_HOME: &str = "/opt/julia";
/// Where Node.js is unpacked when a version is asked.
pub const NODE_HOME: &str = "/opt/node";
/// Where pixi is installed.
pub const PIXI_HOME: &str = "/opt/pixi";

/// Go, when `install.go()` gives no version.
pub const DEFAULT_GO: &str = "1.22.5";
/// Julia's release.
pub const JULIA_VERSION: &str = "1.10.4";

/// One build step.
pub struct Step {
    /// The shell script (run with `/bin/bash -c`).
    pub script: String,
    /// What the progress display calls it.
    pub name: String,
    /// Cache mounts.
    pub caches: Vec<CacheMount>,
    /// Run as the environment's user instead of root.
    pub as_user: bool,
    /// Reads files of the build context (mounted only then: a context change must not
    /// invalidate the other steps' cache).
    pub reads_context: bool,
}

fn step(name: impl Into<String>, script: impl Into<String>) -> Step {
    Step {
        script: format!("set -euo pipefail\n{}", script.into()),
        name: name.into(),
        caches: vec![],
        as_user: false,
        reads_context: false,
    }
}

fn quote_all(items: &[String]) -> String {
    items
        .iter()
        .map(|p| super::quote(p))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the program has conda.
pub fn has_conda(g: &Graph) -> bool {
    g.languages
        .iter()
        .any(|l| matches!(l, Language::Conda { .. }))
        || !g.conda_packages.is_empty()
}

fn use_mamba(g: &Graph) -> bool {
    g.languages
        .iter()
        .any(|l| matches!(l, Language::Conda { use_mamba: true }))
}

/// Debian packages the toolchains need.
pub fn apt_packages(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for l in &g.languages {
        match l {
            Language::R => out.extend(["r-base", "r-base-dev"]),
            Language::NodeJs { version: None } => out.extend(["nodejs", "npm"]),
            Language::NodeJs { version: Some(_) } => out.push("xz-utils"),
            Language::Rust { .. } => out.extend(["gcc", "libc6-dev"]),
            _ => {}
        }
    }
    if g.codex.is_some()
        && !g
            .languages
            .iter()
            .any(|l| matches!(l, Language::NodeJs { .. }))
    {
        out.extend(["nodejs", "npm"]);
    }
    if !g.vscode_extensions.is_empty() {
        out.extend(["unzip", "jq"]);
    }
    out.into_iter().map(String::from).collect()
}

/// Directories the toolchains add to PATH, first wins.
pub fn paths(g: &Graph, home: &str) -> Vec<String> {
    let mut out = Vec::new();
    if has_conda(g) {
        out.push(format!("{CONDA_ENV}/bin"));
        out.push(format!("{CONDA_ROOT}/bin"));
    }
    for l in &g.languages {
        match l {
            Language::Rust { .. } => out.push(format!("{RUST_HOME}/cargo/bin")),
            Language::Go { .. } => {
                out.push("/usr/local/go/bin".into());
                out.push(format!("{home}/go/bin"));
            }
            Language::NodeJs { version: Some(_) } => out.push(format!("{NODE_HOME}/bin")),
            Language::Julia => out.push(format!("{JULIA_HOME}/bin")),
            Language::Pixi { .. } => out.push(format!("{PIXI_HOME}/bin")),
            _ => {}
        }
    }
    out
}

/// Environment variables the toolchains need at run time.
pub fn environment(g: &Graph, home: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for l in &g.languages {
        match l {
            Language::Rust { .. } => {
                out.push(("RUSTUP_HOME".into(), RUST_HOME.into()));
                out.push(("CARGO_HOME".into(), format!("{RUST_HOME}/cargo")));
            }
            Language::Go { .. } => out.push(("GOPATH".into(), format!("{home}/go"))),
            Language::Julia => {
                if let Some(s) = &g.config.julia_pkg_server {
                    out.push(("JULIA_PKG_SERVER".into(), s.clone()));
                }
            }
            _ => {}
        }
    }
    out
}

/// Conda: Miniforge into [`CONDA_ROOT`], an environment with the asked Python at [`CONDA_ENV`]
/// (where pip packages then go), the channels of `config.conda_channel`, and every
/// `install.conda_packages`.
pub fn conda_steps(g: &Graph, python_version: &str, owner: (u32, u32)) -> Vec<Step> {
    let caches = vec![CacheMount {
        dest: "/var/cache/envd-conda".into(),
        id: "envd-conda-pkgs".into(),
    }];
    let tool = if use_mamba(g) { "mamba" } else { "conda" };
    let mut steps = Vec::new();
    let mut install = step(
        format!("install conda (Miniforge) with Python {python_version}"),
        format!(
            "export CONDA_PKGS_DIRS=/var/cache/envd-conda\n\
             curl -fsSL -o /tmp/miniforge.sh https://github.com/conda-forge/miniforge/releases/latest/download/Miniforge3-Linux-x86_64.sh\n\
             bash /tmp/miniforge.sh -b -p {CONDA_ROOT}\n\
             rm /tmp/miniforge.sh\n\
             {CONDA_ROOT}/bin/{tool} create -y -p {CONDA_ENV} python={python_version}\n"
        ),
    );
    install.caches = caches.clone();
    steps.push(install);
    if let Some(channels) = &g.config.conda_channel {
        steps.push(step(
            "write the conda channels (config.conda_channel)",
            format!("cat > {CONDA_ROOT}/.condarc <<'ENVD_EOF'\n{channels}\nENVD_EOF\n"),
        ));
    }
    for (i, p) in g.conda_packages.iter().enumerate() {
        let script = match &p.env_file {
            Some(file) => format!(
                "{CONDA_ROOT}/bin/{tool} env update -p {CONDA_ENV} -f {}",
                super::quote(&crate::build_context::BuildContext::path_in_image(file))
            ),
            None => {
                let channels: String = p
                    .channels
                    .iter()
                    .map(|c| format!(" -c {}", super::quote(c)))
                    .collect();
                format!(
                    "{CONDA_ROOT}/bin/{tool} install -y -p {CONDA_ENV}{channels} {}",
                    quote_all(&p.names)
                )
            }
        };
        let mut s = step(
            format!(
                "conda install #{}: {}",
                i + 1,
                p.env_file.clone().unwrap_or_else(|| p.names.join(" "))
            ),
            format!("export CONDA_PKGS_DIRS=/var/cache/envd-conda\n{script}"),
        );
        s.caches = caches.clone();
        steps.push(s);
    }
    steps.push(step(
        "hand conda to the envd user",
        format!(
            "chown -R {}:{} {CONDA_ROOT} && chmod -R g+w {CONDA_ROOT}",
            owner.0, owner.1
        ),
    ));
    steps
}

/// Every toolchain but Python and conda, then their packages, in a stable order.
pub fn other_steps(g: &Graph, home: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = g
        .languages
        .iter()
        .filter_map(|l| language_step(l, home))
        .collect();
    steps.extend(r_packages(g));
    steps.extend(julia_packages(g, home));
    steps.extend(codex(g));
    steps.extend(vscode_extensions(g, home));
    steps
}

/// The install step of one language (Python and conda have their own stages).
fn language_step(language: &Language, home: &str) -> Option<Step> {
    Some(match language {
        Language::Rust { version } => {
            let v = version.as_deref().unwrap_or("stable");
            step(
                format!("install Rust {v} (rustup)"),
                format!(
                    "export RUSTUP_HOME={RUST_HOME} CARGO_HOME={RUST_HOME}/cargo\n\
                     curl -fsSL https://sh.rustup.rs | sh -s -- -y --no-modify-path --profile minimal --default-toolchain {}\n\
                     chmod -R a+rwX {RUST_HOME}",
                    super::quote(v)
                ),
            )
        }
        Language::Go { version } => {
            let v = version.as_deref().unwrap_or(DEFAULT_GO);
            step(
                format!("install Go {v}"),
                format!(
                    "curl -fsSL https://go.dev/dl/go{v}.linux-amd64.tar.gz | tar -C /usr/local -xz\n\
                     /usr/local/go/bin/go version"
                ),
            )
        }
        Language::NodeJs { version: Some(v) } => {
            let v = v.trim_start_matches('v');
            step(
                format!("install Node.js {v}"),
                format!(
                    "mkdir -p {NODE_HOME}\n\
                     curl -fsSL https://nodejs.org/dist/v{v}/node-v{v}-linux-x64.tar.xz | tar -C {NODE_HOME} --strip-components=1 -xJ\n\
                     {NODE_HOME}/bin/node --version"
                ),
            )
        }
        Language::Julia => {
            let minor = JULIA_VERSION
                .rsplit_once('.')
                .map(|(minor, _)| minor)
                .unwrap_or("1.10");
            step(
                format!("install Julia {JULIA_VERSION}"),
                format!(
                    "mkdir -p {JULIA_HOME}\n\
                     curl -fsSL https://julialang-s3.julialang.org/bin/linux/x64/{minor}/julia-{JULIA_VERSION}-linux-x86_64.tar.gz | tar -C {JULIA_HOME} --strip-components=1 -xz\n\
                     {JULIA_HOME}/bin/julia --version"
                ),
            )
        }
        Language::Pixi {
            use_pixi_mirror,
            pypi_index,
        } => pixi(*use_pixi_mirror, pypi_index.as_deref(), home),
        _ => return None,
    })
}

/// pixi, with the prefix.dev mirror and a PyPI index when asked.
fn pixi(use_pixi_mirror: bool, pypi_index: Option<&str>, home: &str) -> Step {
    let mut s = format!(
        "curl -fsSL https://pixi.sh/install.sh | PIXI_HOME={PIXI_HOME} PIXI_NO_PATH_UPDATE=1 bash\n"
    );
    if use_pixi_mirror {
        s.push_str(&format!(
            "mkdir -p {home}/.pixi && printf '[mirrors]\\n\"https://conda.anaconda.org/conda-forge\" = [\"https://prefix.dev/conda-forge\"]\\n' > {home}/.pixi/config.toml\n"
        ));
    }
    if let Some(ix) = pypi_index {
        s.push_str(&format!(
            "mkdir -p {home}/.pixi && printf '[pypi-config]\\nindex-url = \"%s\"\\n' {} >> {home}/.pixi/config.toml\n",
            super::quote(ix)
        ));
    }
    step("install pixi", s)
}

/// Names as an R or Julia vector's elements: `"a", "b"`.
fn quoted_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|p| format!("{p:?}")).collect();
    quoted.join(", ")
}

/// `install.r_packages` from the CRAN mirror, failing when one does not load.
fn r_packages(g: &Graph) -> Option<Step> {
    if g.r_packages.is_empty() {
        return None;
    }
    let mirror = g
        .config
        .cran_mirror
        .clone()
        .unwrap_or_else(|| "https://cloud.r-project.org".into());
    let list = quoted_list(&g.r_packages);
    Some(step(
        format!("install R packages {}", g.r_packages.join(" ")),
        format!(
            "Rscript -e 'install.packages(c({list}), repos={mirror:?}, Ncpus=2); for (p in c({list})) if (!requireNamespace(p, quietly=TRUE)) quit(status=1)'"
        ),
    ))
}

/// `install.julia_packages` into the user's depot.
fn julia_packages(g: &Graph, home: &str) -> Option<Step> {
    if g.julia_packages.is_empty() {
        return None;
    }
    let list = quoted_list(&g.julia_packages);
    let server = g
        .config
        .julia_pkg_server
        .as_ref()
        .map(|s| format!("export JULIA_PKG_SERVER={}\n", super::quote(s)))
        .unwrap_or_default();
    let mut s = step(
        format!("install Julia packages {}", g.julia_packages.join(" ")),
        format!(
            "{server}export JULIA_DEPOT_PATH={home}/.julia\n{JULIA_HOME}/bin/julia -e 'using Pkg; Pkg.add([{list}])'"
        ),
    );
    s.as_user = true;
    Some(s)
}

/// `install.codex`: OpenAI's Codex CLI with npm (the installed Node.js's when a version was asked).
fn codex(g: &Graph) -> Option<Step> {
    let v = g.codex.as_ref()?;
    let own_node = g
        .languages
        .iter()
        .any(|l| matches!(l, Language::NodeJs { version: Some(_) }));
    let npm = if own_node {
        format!("{NODE_HOME}/bin/npm")
    } else {
        "npm".into()
    };
    let spec = if v.is_empty() || v == "latest" {
        "@openai/codex".to_string()
    } else {
        format!("@openai/codex@{v}")
    };
    Some(step(
        format!("npm install -g {spec}"),
        format!("{npm} install -g {}", super::quote(&spec)),
    ))
}

/// `install.vscode_extensions`: local `.vsix` files from the build context, others from
/// open-vsx.org, unpacked into the directory both the VS Code server and desktop Remote-SSH read,
/// as `publisher.name-version` from the extension's own package.json.
fn vscode_extensions(g: &Graph, home: &str) -> Option<Step> {
    if g.vscode_extensions.is_empty() {
        return None;
    }
    let mut script = format!(
        "mkdir -p {home}/.vscode-server/extensions\n\
         unpack() {{ rm -rf /tmp/ext && unzip -q \"$1\" 'extension/*' -d /tmp/ext\n\
         id=$(jq -r '.publisher + \".\" + .name + \"-\" + .version' /tmp/ext/extension/package.json)\n\
         rm -rf \"{home}/.vscode-server/extensions/$id\" && mv /tmp/ext/extension \"{home}/.vscode-server/extensions/$id\" && rm -rf /tmp/ext; }}\n"
    );
    for ext in &g.vscode_extensions {
        if ext.ends_with(".vsix") {
            let path = crate::build_context::BuildContext::path_in_image(ext);
            script.push_str(&format!("unpack {}\n", super::quote(&path)));
            continue;
        }
        let Some((publisher, name)) = ext.split_once('.') else {
            continue;
        };
        script.push_str(&format!(
            "meta=$(curl -fsSL https://open-vsx.org/api/{publisher}/{name}/latest) && \
             url=$(printf '%s' \"$meta\" | jq -r .files.download) && \
             curl -fsSL -o /tmp/ext.vsix \"$url\" || {{ echo 'envd: cannot download the VS Code extension {ext} from open-vsx.org (a local .vsix in the build context installs offline)' >&2; exit 1; }}\n\
             unpack /tmp/ext.vsix && rm -f /tmp/ext.vsix\n"
        ));
    }
    let mut s = step(
        format!(
            "install VS Code extensions {}",
            g.vscode_extensions.join(" ")
        ),
        script,
    );
    s.as_user = true;
    s.reads_context = g.vscode_extensions.iter().any(|e| e.ends_with(".vsix"));
    Some(s)
}

/// The CUDA base image for `install.cuda(version, cudnn)`, as envd picks it.
pub fn cuda_image(version: &str, cudnn: &str) -> String {
    let cudnn = if cudnn.is_empty() {
        String::new()
    } else {
        format!("-cudnn{}", cudnn.trim_start_matches("cudnn"))
    };
    format!("nvidia/cuda:{version}{cudnn}-devel-ubuntu22.04")
}
