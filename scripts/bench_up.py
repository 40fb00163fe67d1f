#!/usr/bin/env python3
"""`envd up` on an existing image, side by side with the Docker engine alone.

For each round: `envd down`, then `envd up --detach` of an already-built project (the build step
finds the image up to date). Measured from the moment `envd up` is started:
  - ssh_ready: the first successful `ssh NAME.envd true` (polled every 20 ms by a separate client);
  - all_healthy: `envd up` returning (it returns once every service is healthy);
and, as reported by `envd up` itself, from the container's start to sshd ready.
The peer is the engine alone: `docker run --rm --entrypoint /bin/true IMAGE` (create, start, run
a command, remove) on the same image.

Usage: scripts/bench_up.py ENVD PROJECT_DIR [--runs N] [--out FILE]
"""

import argparse
import os
import re
import statistics
import subprocess
import threading
import time


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("envd")
    ap.add_argument("project")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    name = os.path.basename(os.path.abspath(a.project)).lower()
    image = f"{name}:dev"

    # Build once (not measured).
    r = run([a.envd, "up", "--path", a.project, "--detach"])
    if r.returncode != 0:
        raise SystemExit(f"envd up failed:\n{r.stdout}{r.stderr}")

    ssh_ready, all_healthy, inside_ssh, inside_all, docker_alone = [], [], [], [], []
    for _ in range(a.runs):
        run([a.envd, "down", "--name", name])
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [a.envd, "up", "--path", a.project, "--detach"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        first_ssh = [None]

        def poll_ssh():
            while proc.poll() is None or first_ssh[0] is None:
                if time.monotonic() - t0 > 120:
                    return
                r = run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=2", f"{name}.envd", "true"])
                if r.returncode == 0:
                    first_ssh[0] = time.monotonic() - t0
                    return
                time.sleep(0.02)

        poller = threading.Thread(target=poll_ssh)
        poller.start()
        out, _ = proc.communicate()
        all_healthy.append(time.monotonic() - t0)
        poller.join()
        if proc.returncode != 0:
            raise SystemExit(f"envd up failed:\n{out}")
        # The ssh entry is written as soon as sshd serves (before the other services are
        # healthy); the poller's first success is the end-to-end "can I ssh".
        ssh_ready.append(first_ssh[0] if first_ssh[0] is not None else float("nan"))
        m = re.search(r"every service healthy ([0-9.]+)s after the start, sshd after ([0-9.]+)s", out)
        if m:
            inside_all.append(float(m.group(1)))
            inside_ssh.append(float(m.group(2)))

        t0 = time.monotonic()
        r = run(["docker", "run", "--rm", "--entrypoint", "/bin/true", image])
        docker_alone.append(time.monotonic() - t0)
        if r.returncode != 0:
            raise SystemExit(f"docker run failed: {r.stderr}")
    run([a.envd, "down", "--name", name])

    med = statistics.median
    d = med(docker_alone)
    spread = lambda xs: f"{min(xs):.2f} / {med(xs):.2f} / {max(xs):.2f}"
    rows = [
        ("docker run --rm IMAGE /bin/true (engine alone)", docker_alone),
        ("envd up: `ssh NAME.envd true` first succeeds", ssh_ready),
        ("envd up: returns, every service healthy", all_healthy),
    ]
    if inside_ssh:
        rows.append(("container start -> sshd ready (reported by envd up)", inside_ssh))
        rows.append(("container start -> all healthy (reported by envd up)", inside_all))
    lines = [
        f"`envd up` of `{a.project}` on an existing image, {a.runs} rounds (each: envd down, "
        "envd up --detach, then the engine alone); min / median / max, ratio of the medians:",
        "",
        "| measure | seconds (min / median / max) | x engine alone |",
        "|---|---|---|",
    ]
    for label, xs in rows:
        lines.append(f"| {label} | {spread(xs)} | {med(xs) / d:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
