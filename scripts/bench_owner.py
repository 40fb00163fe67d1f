#!/usr/bin/env python3
"""What "your files stay yours" costs: host users of one project, side by side in one run.

envd-rs builds one image per project, whoever builds it (the image's user has uid 1000), and
envd-init gives that user the host user's uid and gid at start (supervisor/src/identity.rs). So:
  - build: the first user's cold build, then a second host user's `envd up` of the same project
    (nothing to build), and how many images the engine then holds for the project;
  - start: `envd up --detach` on the existing image to every service healthy, and the container
    start -> all healthy time envd up reports, for a host user whose uid already is 1000 (no id
    change: the baseline), for root (uid 0) and for uid 1235 (ids changed, home re-owned).

Each host user has their own HOME (their own ~/.config/envd and SSH entry) and acts through
setpriv with the docker group. The cold build empties the engine's build cache first
(`docker builder prune -af`) unless --no-cold is given.

Usage: scripts/bench_owner.py ENVD PROJECT_DIR [--runs N] [--no-cold] [--out FILE]
"""

import argparse
import grp
import os
import pwd
import re
import shutil
import statistics
import subprocess
import time


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def host_user(uid, name):
    """An account with this uid (created with a home when none exists): (name, uid, gid, home)."""
    try:
        p = pwd.getpwuid(uid)
    except KeyError:
        r = run(["useradd", "-m", "-u", str(uid), "-U", "-s", "/bin/bash", name])
        if r.returncode != 0:
            raise SystemExit(f"useradd {name}: {r.stderr}")
        p = pwd.getpwuid(uid)
    return p.pw_name, p.pw_uid, p.pw_gid, p.pw_dir


def as_user(user, cmd):
    name, uid, gid, home = user
    docker_gid = grp.getgrnam("docker").gr_gid
    return [
        "setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={gid},{docker_gid}",
        "env", f"HOME={home}", f"USER={name}", "ENVD_PROGRESS=plain",
        f"ENVD_RUNTIME_DIR={os.environ['ENVD_RUNTIME_DIR']}",
    ] + cmd


def project_for(user, source):
    """A copy of the project owned by `user`, under a directory of the same name for every user
    (the environment's name, and so its image, comes from it)."""
    name, uid, gid, home = user
    base = f"/var/tmp/envd-owner-bench/{name}"
    shutil.rmtree(base, ignore_errors=True)
    dest = os.path.join(base, os.path.basename(os.path.abspath(source)))
    shutil.copytree(source, dest)
    os.makedirs(home, exist_ok=True)
    run(["chown", "-R", f"{uid}:{gid}", base, home])
    os.chmod("/var/tmp/envd-owner-bench", 0o755)
    return dest


def up(envd, user, path):
    t0 = time.monotonic()
    r = run(as_user(user, [envd, "up", "--path", path, "--detach"]))
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"envd up as {user[0]} failed:\n{r.stdout}{r.stderr}")
    m = re.search(r"every service healthy ([0-9.]+)s after the start", r.stdout)
    built = re.search(r"image \S+: (up to date|built in ([0-9.]+)s)", r.stdout)
    return took, float(m.group(1)) if m else float("nan"), built.group(0) if built else "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("envd")
    ap.add_argument("project")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    # Every host user must be able to run envd and read the runtime: copy them out of the
    # checkout, which may sit in a directory only root can enter.
    runtime = "/var/tmp/envd-owner-bench-runtime"
    shutil.rmtree(runtime, ignore_errors=True)
    os.makedirs(runtime)
    os.chmod(runtime, 0o755)
    for b in ("envd", "envd-init", "envd-sshd"):
        shutil.copy(os.path.join(os.environ["ENVD_RUNTIME_DIR"], b), runtime)
        os.chmod(os.path.join(runtime, b), 0o755)
    os.environ["ENVD_RUNTIME_DIR"] = runtime
    envd = os.path.join(runtime, "envd")
    env = os.path.basename(os.path.abspath(a.project)).lower()
    users = {
        "uid 1000 (no id change)": host_user(1000, "envdbase"),
        "root (uid 0)": host_user(0, "root"),
        "uid 1235": host_user(1235, "envdbench"),
    }
    paths = {label: project_for(u, a.project) for label, u in users.items()}
    for u in users.values():
        run(as_user(u, [envd, "down", "--name", env, "--volumes"]))

    lines = []
    first = "root (uid 0)"
    if not a.no_cold:
        run(["docker", "builder", "prune", "-af"])
        run(["docker", "rmi", "-f", f"{env}:dev"])
    took, _, built = up(envd, users[first], paths[first])
    run(as_user(users[first], [envd, "down", "--name", env]))
    second = "uid 1235"
    took2, _, built2 = up(envd, users[second], paths[second])
    run(as_user(users[second], [envd, "down", "--name", env]))
    images = run(["docker", "images", "-q", f"{env}:dev"]).stdout.split()
    lines += [
        f"Build: `{a.project}`, {'cold (empty build cache)' if not a.no_cold else 'cache as found'} for the first host user, then a second host user:",
        "",
        "| step (one run each: the first user's build happens once) | seconds (envd up, to all healthy) | build step |",
        "|---|---|---|",
        f"| {first}: first envd up | {took:.2f} | {built} |",
        f"| {second}: envd up of the same project | {took2:.2f} | {built2} |",
        "",
        f"Images for the project afterwards: {len(images)} (one image serves every host user).",
        "",
    ]

    starts = {label: ([], []) for label in users}
    for _ in range(a.runs):
        for label, u in users.items():
            took, inside, _ = up(envd, u, paths[label])
            run(as_user(u, [envd, "down", "--name", env]))
            starts[label][0].append(took)
            starts[label][1].append(inside)
    med = statistics.median
    base = "uid 1000 (no id change)"
    b_total = med(starts[base][0])
    lines += [
        f"Start: envd up --detach on the existing image, {a.runs} rounds, the users taking turns "
        "within each (each: envd up, envd down); min / median / max:",
        "",
        "| host user | envd up -> all healthy (s) | container start -> all healthy (s) | x uid 1000 (medians) |",
        "|---|---|---|---|",
    ]
    spread = lambda xs: f"{min(xs):.2f} / {med(xs):.2f} / {max(xs):.2f}"  # noqa: E731
    for label in users:
        total = med(starts[label][0])
        lines.append(f"| {label} | {spread(starts[label][0])} | {spread(starts[label][1])} | "
                     f"{total / b_total:.2f}x |")
    for u in users.values():
        run(as_user(u, [envd, "down", "--name", env, "--volumes"]))
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
