# Shared set-up for scripts/test, scripts/quickstart and scripts/bench (sourced, not run).
# Idempotent: on a machine that already has everything it returns in a few seconds.

APT_PACKAGES=(docker.io debootstrap openssh-client openssh-server python3-venv curl ca-certificates
              musl-tools tini dumb-init iproute2 procps util-linux hyperfine
              zsh fish git chromium fonts-dejavu-core docker-registry socat openssl
              neovim)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "this script sets up system packages and dockerd; run it as root" >&2
    exit 1
  fi
}

install_packages() {
  local missing=() wanted=("${APT_PACKAGES[@]}")
  # kubectl for the cluster tests: Debian's kubernetes-client, unless one is installed already
  # (another package's kubectl would conflict with it).
  command -v kubectl >/dev/null 2>&1 || wanted+=(kubernetes-client)
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

docker_answers() { timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start_docker() {
  if docker_answers; then return 0; fi
  log "starting dockerd in the background (log: /var/log/envd-dockerd.log)"
  mkdir -p /var/log
  nohup dockerd >/var/log/envd-dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    if docker_answers; then return 0; fi
    sleep 0.5
  done
  echo "dockerd did not answer within 60 s; last log lines:" >&2
  tail -20 /var/log/envd-dockerd.log >&2
  exit 1
}

# No registry is reachable, so the base image is made here from Debian's packages.
ensure_base_image() {
  if docker image inspect debian:bookworm >/dev/null 2>&1; then return 0; fi
  log "creating the base image debian:bookworm with debootstrap (about a minute)"
  local dir
  dir="$(mktemp -d /var/tmp/envd-bookworm.XXXXXX)"
  debootstrap --variant=minbase bookworm "$dir" http://deb.debian.org/debian >/var/log/envd-debootstrap.log 2>&1 \
    || { tail -20 /var/log/envd-debootstrap.log >&2; exit 1; }
  tar -C "$dir" -c . | docker import - debian:bookworm >/dev/null
  rm -rf "$dir"
}

ensure_rust_targets() {
  rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 \
    || log "musl target unavailable; the runtime will be built with glibc + crt-static"
}

prereqs() {
  need_root
  install_packages
  ensure_rust_targets
  start_docker
  ensure_base_image
}

# Horust's published crate: its example service files are test data for our parser, and the
# benchmark builds Horust from it. Fetched from crates.io (no GitHub needed).
HORUST_VERSION=0.1.13
# starlark's own language server (starlark_bin), the LSP benchmark's peer: the version starlark_lsp is.
STARLARK_BIN_VERSION=0.14.2
ensure_horust_src() {
  local dest=target/peers/horust-src
  if [ -f "$dest/example_services/sample_service.toml" ]; then return 0; fi
  log "fetching Horust $HORUST_VERSION's crate (test data: its example service files)"
  mkdir -p target/peers
  curl -sfL --retry 3 -o target/peers/horust.crate \
    "https://static.crates.io/crates/horust/horust-$HORUST_VERSION.crate"
  rm -rf "$dest" && mkdir -p "$dest"
  tar -xzf target/peers/horust.crate -C "$dest" --strip-components=1
}

# starship (the prompt the rc files hand over to when it is installed) from crates.io: Debian 12
# does not package it. A debug build (about 4 minutes cold) is enough to render prompts.
STARSHIP_VERSION=1.27.0
ensure_starship() {
  if target/peers/bin/starship --version 2>/dev/null | grep -q "starship $STARSHIP_VERSION"; then return 0; fi
  log "building starship $STARSHIP_VERSION from crates.io (the prompt tests render it)"
  cargo install --quiet --locked --debug starship --version "$STARSHIP_VERSION" --root target/peers
}

# Python test peers from PyPI, in a venv of their own: ssh-audit (audits envd-sshd's algorithms)
# and asyncssh (sends `signal` requests, which OpenSSH's client cannot).
ensure_python_tools() {
  local venv=target/peers/venv
  if [ -x "$venv/bin/ssh-audit" ] && "$venv/bin/python" -c 'import asyncssh' 2>/dev/null; then return 0; fi
  log "installing ssh-audit and asyncssh from PyPI into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check ssh-audit==3.9.0 asyncssh==2.24.1
}

# envd 1.3.6 (envd's last release, a Go binary in a PyPI wheel): the independent reference the
# compile tests check our LLB against (tests/tests/compile_reference.rs), and the compiler
# benchmark's peer. Installed once into target/peers/envd-1.3.6.
ensure_envd_reference() {
  local venv=target/peers/envd-1.3.6
  if [ -x "$venv/bin/envd" ]; then return 0; fi
  log "installing envd 1.3.6 from PyPI into $venv (the compile tests' reference)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check envd==1.3.6
}

# playwright-core from the npm registry drives Debian's Chromium in the JupyterLab tests (it
# downloads no browser of its own). Pinned by tests/browser/package-lock.json; installed once
# into target/peers/browser.
ensure_browser_driver() {
  local dest=target/peers/browser
  if cmp -s tests/browser/package-lock.json "$dest/package-lock.json" \
     && [ -f "$dest/node_modules/playwright-core/package.json" ]; then return 0; fi
  command -v npm >/dev/null 2>&1 || {
    log "installing Debian's nodejs and npm (for playwright-core)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  }
  log "installing playwright-core from the npm registry into $dest"
  mkdir -p "$dest"
  cp tests/browser/package.json tests/browser/package-lock.json "$dest/"
  (cd "$dest" && npm ci --silent --no-audit --no-fund)
}

# The test runner: the suite relies on nextest's per-test processes, serialised timing tests and
# timeouts (.config/nextest.toml); plain `cargo test` would run them as threads of one process.
NEXTEST_VERSION=0.9.143
ensure_nextest() {
  if cargo nextest --version >/dev/null 2>&1; then return 0; fi
  log "installing cargo-nextest $NEXTEST_VERSION from crates.io (the test runner; about 4 minutes)"
  cargo install --quiet --locked cargo-nextest --version "$NEXTEST_VERSION"
}
