#!/usr/bin/env python3
"""`envd build` side by side with a hand-written Dockerfile on the same BuildKit, and uv vs pip.

The environment: debian:bookworm, apt `jq` and Node.js (a toolchain, Debian's), pip packages from
a requirements file. The peer is a Dockerfile with the same apt packages, user and venv (the
host's CA given to pip, as envd-rs does), built
  - on a standalone buildkitd (`--builder buildkitd`): `buildctl build --frontend dockerfile.v0
    --output type=docker | docker load`, envd-rs with `--builder unix`;
  - on the Docker engine (`--builder moby`, the engine DOCKER_HOST names): `docker build` as
    Debian's docker CLI runs it (the classic builder: BuildKit needs the buildx plugin, which
    Debian 12 does not package), `--no-cache` for the cold rows; envd-rs with the engine's
    BuildKit.
envd-rs installs the Python packages with uv (its default); a third side is envd-rs with
`install.python(installer="pip")`: the same packages through pip.

Rows, each side in turn, the order rotating every round:
  - cold: the builder's whole cache pruned first (layers and cache mounts);
  - one more package: the requirements file gains `tqdm` (warm; not a dependency of the others);
  - unchanged, rebuilt: the same build again (`--force` for envd-rs: BuildKit solves it);
  - unchanged, envd-rs's own check: `envd build` without `--force` (the image's label says it is
    current; the Dockerfile has no such check, so the peer column repeats its rebuild);
  - image size: the engine's size of each image.

Usage: scripts/bench_build.py ENVD --builder buildkitd|moby [--bin DIR --address ADDR]
       [--runs N] [--out FILE]
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


def build_envd(python):
    return f"""def build():
    base(image="debian:bookworm", dev=True)
    {python}
    install.apt_packages(name={APT!r})
    install.nodejs()
    install.python_packages(requirements="requirements.txt")
""".replace("'", '"')


# What envd-rs's dev image holds, by hand: its apt set with the same packages and Node.js, the
# user, a venv with the requirements.
DOCKERFILE = f"""FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends bash ca-certificates curl fish git \\
    less locales openssh-client procps python3 python3-pip python3-venv sudo vim-tiny zsh \\
    nodejs npm {' '.join(APT)}
RUN useradd -m -u 1000 -s /bin/bash envd
COPY host-ca.crt /etc/host-ca.crt
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/envd/venv && PIP_CERT=/etc/host-ca.crt /opt/envd/venv/bin/pip install -r /tmp/requirements.txt
"""


def timed(cmd, **kw):
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return time.monotonic() - t0


def image_size(tag):
    r = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True)
    return int(r.stdout.strip()) / 1e6


def project(root, name, python):
    path = os.path.join(root, name)
    os.makedirs(path)
    files = {
        "build.envd": build_envd(python),
        "requirements.txt": "\n".join(PIP) + "\n",
        "Dockerfile": DOCKERFILE,
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
    ap.add_argument("--linear", action="store_true",
                    help="a fourth side: envd-rs with ENVD_MERGE=off (one chain where MergeOp exists)")
    ap.add_argument("--out")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-build-")
    projects = {
        "envd-rs": project(work, "benchuv", "install.python()"),
        "Dockerfile": project(work, "benchfile", "install.python()"),
        "envd-rs, pip": project(work, "benchpipinst", 'install.python(installer="pip")'),
    }
    if a.linear:
        projects["envd-rs, one chain"] = project(work, "benchchain", "install.python()")
    tags = {k: f"bench/{k.replace(', ', '-').replace('envd-rs', 'envd').lower()}:build" for k in projects}

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
        env = {**os.environ, "ENVD_MERGE": "off"} if side == "envd-rs, one chain" else None
        return timed([a.envd, "build", "--path", path, "-t", tag] + (["--force"] if force else []) + envd_builder,
                     env=env)

    rows = ["cold", "one more package", "unchanged, rebuilt", "unchanged, envd's check"]
    times = {r: {s: [] for s in projects} for r in rows}
    for i in range(a.runs):
        n = len(projects)
        order = list(projects)[i % n:] + list(projects)[:i % n]
        for side in order:
            with open(os.path.join(projects[side], "requirements.txt"), "w") as f:
                f.write("\n".join(PIP) + "\n")
            prune()
            times["cold"][side].append(build(side, cold=True))
            with open(os.path.join(projects[side], "requirements.txt"), "a") as f:
                f.write(f"{MORE}\n")
            times["one more package"][side].append(build(side))
            times["unchanged, rebuilt"][side].append(build(side))
            times["unchanged, envd's check"][side].append(build(side, force=False))
    sizes = {s: image_size(tags[s]) for s in projects}

    med = statistics.median
    fmt = lambda xs: f"{min(xs):.2f} / {med(xs):.2f} / {max(xs):.2f} s"
    lines = [
        f"{where}: debian:bookworm + apt {', '.join(APT)} + Node.js + pip {', '.join(PIP)}; "
        f"{a.runs} rounds (min / median / max), cold = the builder's cache pruned first.",
        "",
        "| build | envd-rs (uv) | Dockerfile | envd-rs / Dockerfile | envd-rs with pip | uv / pip |"
        + (" envd-rs, one chain | one chain / MergeOp |" if a.linear else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if a.linear else ""),
    ]
    for r in rows:
        e, d, p = (times[r][s] for s in list(projects)[:3])
        line = f"| {r} | {fmt(e)} | {fmt(d)} | {med(e) / med(d):.2f}x | {fmt(p)} | {med(e) / med(p):.2f}x |"
        if a.linear:
            c = times[r]["envd-rs, one chain"]
            line += f" {fmt(c)} | {med(c) / med(e):.2f}x |"
        lines.append(line)
    e, d, p = (sizes[s] for s in list(projects)[:3])
    line = f"| image size | {e:.0f} MB | {d:.0f} MB | {e / d:.2f}x | {p:.0f} MB | {e / p:.2f}x |"
    if a.linear:
        c = sizes["envd-rs, one chain"]
        line += f" {c:.0f} MB | {c / e:.2f}x |"
    lines.append(line)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
