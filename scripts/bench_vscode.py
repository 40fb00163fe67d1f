#!/usr/bin/env python3
"""What `config.vscode_server()` costs, side by side with the same environment without it.

Two projects, identical but for the server: Python, numpy, JupyterLab (`plain`), and the same
plus `config.vscode_server()` (`vscode`). Measured in one run:
  - cold build (the engine's build cache emptied first with `docker builder prune -af`) and warm
    rebuild after one more `install.python_packages` entry, for each; whether the server's steps
    came from the cache on the warm rebuild;
  - image size of each;
  - `envd up --detach` on the built image: container start -> each service healthy, as envd up
    reports it (median of the rounds);
  - idle RSS (10 s after all healthy) of the server's processes, and of envd-init + envd-sshd.

Usage: scripts/bench_vscode.py ENVD [--runs N] [--out FILE]
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


def build(envd, path):
    t0 = time.monotonic()
    r = run([envd, "build", "--path", path], env={**os.environ, "ENVD_PROGRESS": "plain"})
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
    ap.add_argument("--out")
    a = ap.parse_args()
    envd = os.path.abspath(a.envd)
    root = "/var/tmp/envd-vscode-bench"
    shutil.rmtree(root, ignore_errors=True)
    paths = {}
    for kind in ("plain", "vscode"):
        paths[kind] = os.path.join(root, f"bench{kind}")
        os.makedirs(paths[kind])
        write(paths[kind], kind == "vscode", ["numpy"])

    cold, warm, sizes = {}, {}, {}
    for kind in ("plain", "vscode"):
        run(["docker", "builder", "prune", "-af"])
        cold[kind] = build(envd, paths[kind])
    # One more package, twice: the first round fills the pip cache mount for both (the cold
    # builds emptied it), the second is measured.
    for packages in (["numpy", "six"], ["numpy", "six", "idna"]):
        for kind in ("plain", "vscode"):
            write(paths[kind], kind == "vscode", packages)
            warm[kind] = build(envd, paths[kind])
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
    lines = [
        "Build (seconds; cold: empty build cache; warm: one more python package):",
        "",
        "| image | cold build | warm rebuild | server steps rebuilt when warm | size (GB) |",
        "|---|---|---|---|---|",
    ]
    for kind in ("plain", "vscode"):
        steps = f"{warm[kind][2]} of {warm[kind][1]}" if kind == "vscode" else "-"
        lines.append(f"| {kind} | {cold[kind][0]:.1f} | {warm[kind][0]:.1f} | {steps} | {sizes[kind]:.2f} |")
    lines += [
        "",
        f"| | vscode / plain |",
        "|---|---|",
        f"| cold build | {cold['vscode'][0] / cold['plain'][0]:.2f}x |",
        f"| warm rebuild | {warm['vscode'][0] / warm['plain'][0]:.2f}x ({warm['vscode'][0] - warm['plain'][0]:+.1f} s) |",
        f"| image size | {sizes['vscode'] / sizes['plain']:.2f}x |",
        "",
        f"Start (`envd up --detach` of the vscode image, median of {a.runs}): container start -> healthy:",
        "",
        "| service | seconds |",
        "|---|---|",
    ]
    for service, values in ready.items():
        if values:
            lines.append(f"| {service} | {med(values):.2f} |")
    lines += [
        "",
        f"Idle RSS 10 s after all healthy (median of {a.runs}): code-server's processes "
        f"{med(server_rss) / 1024:.0f} MB; envd-init + envd-sshd {med(runtime_rss) / 1024:.1f} MB.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
