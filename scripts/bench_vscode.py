#!/usr/bin/env python3
"""What `config.vscode_server()` costs, side by side with the same environment without it.

Two projects, identical but for the server: Python, numpy, JupyterLab (`plain`), and the same
plus `config.vscode_server()` (`vscode`). Measured in one run:
  - cold build (the engine's build cache emptied first with `docker builder prune -af`) and warm
    rebuild after one more `install.python_packages` entry, for each; whether the server's steps
    came from the cache on the warm rebuild;
  - image size of each;
  - `envd up --detach` on the built image: container start -> each service healthy, as envd up
    reports it;
Builds repeat --build-rounds times, the two projects alternating which goes first; every figure
is min / median / max over its rounds.
  - idle RSS (10 s after all healthy) of the server's processes, and of envd-init + envd-sshd.

Usage: scripts/bench_vscode.py ENVD [--runs N] [--build-rounds N] [--out FILE]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import time

PROGRAM = """def build():
    base(image="debian:bookworm", dev=True)
    install.python()
    install.python_packages(name=[{packages}])
    config.jupyter(port=0)
{extra}"""


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def write(path, vscode, packages):
    extra = "    config.vscode_server(port=0)\n" if vscode else ""
    with open(os.path.join(path, "build.envd"), "w") as f:
        f.write(PROGRAM.format(packages=", ".join(f'"{p}"' for p in packages), extra=extra))


def build(envd, path, force=False):
    t0 = time.monotonic()
    r = run([envd, "build", "--path", path] + (["--force"] if force else []), env={**os.environ, "ENVD_PROGRESS": "plain"})
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"envd build {path} failed:\n{r.stdout}{r.stderr}")
    server_steps = [l for l in r.stdout.splitlines() if "VS Code server" in l or "/opt/envd/vscode" in l]
    rebuilt = [l for l in server_steps if l.startswith("[run]")]
    return took, len(server_steps), len(rebuilt)


def rss_kb(name, pattern):
    r = run(["docker", "exec", name, "ps", "-eo", "rss=,args="])
    return sum(int(l.split()[0]) for l in r.stdout.splitlines() if re.search(pattern, l))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("envd")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--build-rounds", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    envd = os.path.abspath(a.envd)
    root = "/var/tmp/envd-vscode-bench"
    shutil.rmtree(root, ignore_errors=True)
    paths = {}
    kinds = ("plain", "vscode")
    for kind in kinds:
        paths[kind] = os.path.join(root, f"bench{kind}")
        os.makedirs(paths[kind])
    cold, warm, sizes, server_steps = ({k: [] for k in kinds} for _ in range(4))
    for i in range(a.build_rounds):
        order = kinds if i % 2 == 0 else tuple(reversed(kinds))
        for kind in order:
            write(paths[kind], kind == "vscode", ["numpy"])
            run(["docker", "builder", "prune", "-af"])
            cold[kind].append(build(envd, paths[kind], force=True)[0])
        # One more package, twice: the first fills the pip cache mount for both (the cold
        # builds emptied it), the second is measured.
        for packages in (["numpy", "six"], ["numpy", "six", "idna"]):
            for kind in order:
                write(paths[kind], kind == "vscode", packages)
                took, steps, rebuilt = build(envd, paths[kind])
                if len(packages) == 3:
                    warm[kind].append(took)
                    server_steps[kind] = (steps, rebuilt)
    for kind in ("plain", "vscode"):
        size = run(["docker", "image", "inspect", "-f", "{{.Size}}", f"bench{kind}:dev"]).stdout.strip()
        sizes[kind] = int(size) / 1e9

    ready = {"sshd": [], "jupyter": [], "vscode": []}
    server_rss, runtime_rss = [], []
    name = "benchvscode"
    for _ in range(a.runs):
        run([envd, "down", "--name", name])
        r = run([envd, "up", "--path", paths["vscode"], "--detach"])
        if r.returncode != 0:
            raise SystemExit(f"envd up failed:\n{r.stdout}{r.stderr}")
        for service in ready:
            m = re.findall(rf"\[\s*([0-9.]+)s\] {service}\s+healthy", r.stdout)
            if m:
                ready[service].append(float(m[-1]))
        time.sleep(10)
        container = next(l for l in run(["docker", "ps", "--format", "{{.Names}}"]).stdout.split() if l.startswith(name + "."))
        server_rss.append(rss_kb(container, r"code-server"))
        runtime_rss.append(rss_kb(container, r"envd-init|envd-sshd"))
    run([envd, "down", "--name", name, "--volumes"])

    med = statistics.median
    spread = lambda xs, f="{:.1f}": " / ".join(f.format(v) for v in (min(xs), med(xs), max(xs)))  # noqa: E731
    lines = [
        f"Build (seconds, {a.build_rounds} rounds alternating, min / median / max; cold: empty "
        "build cache; warm: one more python package):",
        "",
        "| image | cold build | warm rebuild | server steps rebuilt when warm | size (GB) |",
        "|---|---|---|---|---|",
    ]
    for kind in kinds:
        steps = server_steps[kind]
        rebuilt = f"{steps[1]} of {steps[0]}" if kind == "vscode" else "-"
        lines.append(f"| {kind} | {spread(cold[kind])} | {spread(warm[kind])} | {rebuilt} | "
                     f"{sizes[kind]:.2f} |")
    gap = med(warm["vscode"]) - med(warm["plain"])
    lines += [
        "",
        "| | vscode / plain (medians) |",
        "|---|---|",
        f"| cold build | {med(cold['vscode']) / med(cold['plain']):.2f}x |",
        f"| warm rebuild | {med(warm['vscode']) / med(warm['plain']):.2f}x ({gap:+.1f} s) |",
        f"| image size | {sizes['vscode'] / sizes['plain']:.2f}x |",
        "",
        f"Start (`envd up --detach` of the vscode image, {a.runs} rounds, min / median / max): "
        "container start -> healthy:",
        "",
        "| service | seconds |",
        "|---|---|",
    ]
    for service, values in ready.items():
        if values:
            lines.append(f"| {service} | {spread(values, '{:.2f}')} |")
    lines += [
        "",
        f"Idle RSS 10 s after all healthy ({a.runs} rounds, min / median / max): code-server's "
        f"processes {spread([x / 1024 for x in server_rss], '{:.0f}')} MB; envd-init + envd-sshd "
        f"{spread([x / 1024 for x in runtime_rss])} MB.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
