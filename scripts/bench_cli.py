#!/usr/bin/env python3
"""Installing envd-rs as envd's users install envd, side by side with envd 1.3.6 from PyPI.

Rows (each side in turn, the order alternating, min / median / max):
  - wheel size: our wheel (scripts/build-wheel) vs envd 1.3.6's from PyPI;
  - pip install: `pip install --no-index WHEEL` into a fresh virtualenv, both wheels from local
    files (so the network is not measured);
  - start-up: printing the version from each install (`envd --version`; envd 1.3.6 has no such
    flag, its equivalent is `envd version --short`).

Usage: scripts/bench_cli.py OUR_WHEEL [--runs N] [--out FILE]
"""

import argparse
import glob
import os
import statistics
import subprocess
import tempfile
import time


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("wheel")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-cli-")
    run(["python3", "-m", "pip", "download", "--quiet", "--no-deps", "envd==1.3.6", "-d", work])
    theirs = glob.glob(os.path.join(work, "envd-1.3.6-*.whl"))[0]
    wheels = {"envd-rs": os.path.abspath(a.wheel), "envd 1.3.6": theirs}
    version_args = {"envd-rs": ["--version"], "envd 1.3.6": ["version", "--short"]}
    install, start = {k: [] for k in wheels}, {k: [] for k in wheels}
    for i in range(a.runs):
        order = list(wheels) if i % 2 == 0 else list(reversed(wheels))
        for side in order:
            venv = os.path.join(work, f"venv-{i}-{side.replace(' ', '-')}")
            run(["python3", "-m", "venv", venv])
            t0 = time.monotonic()
            run([f"{venv}/bin/pip", "install", "--quiet", "--no-index", "--disable-pip-version-check", wheels[side]])
            install[side].append(time.monotonic() - t0)
            env = dict(os.environ, ENVD_ANALYTICS="false")
            env.pop("ENVD_RUNTIME_DIR", None)
            for _ in range(10):
                t0 = time.monotonic()
                run([f"{venv}/bin/envd", *version_args[side]], env=env)
                start[side].append(time.monotonic() - t0)
    med = statistics.median
    fmt = lambda xs, unit, scale: f"{min(xs) * scale:.1f} / {med(xs) * scale:.1f} / {max(xs) * scale:.1f} {unit}"
    size = {k: os.path.getsize(w) / 1e6 for k, w in wheels.items()}
    ours, peer = "envd-rs", "envd 1.3.6"
    lines = [
        f"{a.runs} rounds (min / median / max); both wheels installed from local files into fresh virtualenvs.",
        "",
        "| measure | envd-rs | envd 1.3.6 | envd-rs / envd 1.3.6 |",
        "|---|---|---|---|",
        f"| wheel size | {size[ours]:.1f} MB | {size[peer]:.1f} MB | {size[ours] / size[peer]:.2f}x |",
        f"| pip install | {fmt(install[ours], 's', 1)} | {fmt(install[peer], 's', 1)} | {med(install[ours]) / med(install[peer]):.2f}x |",
        f"| print the version | {fmt(start[ours], 'ms', 1000)} | {fmt(start[peer], 'ms', 1000)} | {med(start[ours]) / med(start[peer]):.2f}x |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
