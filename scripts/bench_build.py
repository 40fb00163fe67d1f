#!/usr/bin/env python3
"""`envd build` on a standalone buildkitd, side by side with a hand-written Dockerfile built by
buildctl on the same buildkitd (same base, same packages, both loaded into the Docker engine),
and the same build file with `install.uv()`, so its packages go through `uv pip install`.

Cold rounds prune buildkitd's whole cache first (layers and cache mounts, so apt and pip download
again); warm rounds rebuild with nothing changed (`envd build --force`; buildctl as is). The two
sides alternate, and which goes first alternates too.

Usage: scripts/bench_build.py ENVD BUILDKIT_BIN_DIR BUILDKITD_ADDRESS [--runs N] [--out FILE]
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time

PACKAGES_APT = "jq"
PACKAGES_PIP = ["numpy", "six"]
BUILD_ENVD = f"""def build():
    base(image="debian:bookworm", dev=True)
    install.python()
    install.apt_packages(name=["{PACKAGES_APT}"])
    install.python_packages(requirements="requirements.txt")
"""
BUILD_ENVD_UV = BUILD_ENVD.replace("install.python()", "install.uv()")
# What envd-rs's dev image holds, by hand: its apt set, the user, a venv with the packages. The
# host's CA bundle is given to pip as envd-rs does (this machine's network intercepts TLS).
DOCKERFILE = f"""FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends bash ca-certificates curl fish git \\
    less locales openssh-client procps python3 python3-pip python3-venv sudo vim-tiny zsh {PACKAGES_APT}
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("envd")
    ap.add_argument("bin")
    ap.add_argument("address")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    buildctl = [os.path.join(a.bin, "buildctl"), "--addr", a.address]
    work = tempfile.mkdtemp(prefix="bench-build-")
    proj = os.path.join(work, "benchbuild")
    os.makedirs(proj)
    with open(os.path.join(proj, "build.envd"), "w") as f:
        f.write(BUILD_ENVD)
    proj_uv = os.path.join(work, "benchbuilduv")
    os.makedirs(proj_uv)
    with open(os.path.join(proj_uv, "build.envd"), "w") as f:
        f.write(BUILD_ENVD_UV)
    with open(os.path.join(proj_uv, "requirements.txt"), "w") as f:
        f.write("\n".join(PACKAGES_PIP) + "\n")
    with open(os.path.join(proj, "requirements.txt"), "w") as f:
        f.write("\n".join(PACKAGES_PIP) + "\n")
    with open(os.path.join(proj, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    with open("/etc/ssl/certs/ca-certificates.crt", "rb") as src, open(os.path.join(proj, "host-ca.crt"), "wb") as dst:
        dst.write(src.read())

    def envd_build(path=proj):
        return timed([a.envd, "build", "--path", path, "-t", "bench/envd:build", "--force",
                      "--builder", "unix", "--builder-address", a.address])

    def dockerfile_build():
        t0 = time.monotonic()
        build = subprocess.Popen(buildctl + ["build", "--frontend", "dockerfile.v0", "--local", f"context={proj}",
                                             "--local", f"dockerfile={proj}", "--output",
                                             "type=docker,name=bench/dockerfile:build"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        load = subprocess.run(["docker", "load"], stdin=build.stdout, capture_output=True, text=True)
        if build.wait() != 0 or load.returncode != 0:
            raise SystemExit(f"buildctl build | docker load failed: {load.stderr}")
        return time.monotonic() - t0

    sides = {
        "envd-rs": envd_build,
        "Dockerfile (buildctl)": dockerfile_build,
        "envd-rs, install.uv()": lambda: envd_build(proj_uv),
    }
    cold = {k: [] for k in sides}
    warm = {k: [] for k in sides}
    for i in range(a.runs):
        order = list(sides)[i % 3:] + list(sides)[:i % 3]
        for name in order:
            timed(buildctl + ["prune", "--all"])
            cold[name].append(sides[name]())
            warm[name].append(sides[name]())
    lines = [
        f"Standalone buildkitd ({subprocess.run(buildctl[:1] + ['--version'], capture_output=True, text=True).stdout.split()[2]}), "
        f"apt `{PACKAGES_APT}` + pip {', '.join(PACKAGES_PIP)} on debian:bookworm, loaded into the engine; "
        f"{a.runs} rounds, cold = whole cache pruned first.",
        "",
        "| build | envd-rs (min / median / max) | Dockerfile via buildctl | ratio | envd-rs with uv | uv / pip |",
        "|---|---|---|---|---|---|",
    ]
    for label, data in [("cold", cold), ("no change", warm)]:
        e, d, u = data["envd-rs"], data["Dockerfile (buildctl)"], data["envd-rs, install.uv()"]
        fmt = lambda xs: f"{min(xs):.1f} / {statistics.median(xs):.1f} / {max(xs):.1f} s"
        med = statistics.median
        lines.append(f"| {label} | {fmt(e)} | {fmt(d)} | {med(e) / med(d):.2f}x | {fmt(u)} | {med(u) / med(e):.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
