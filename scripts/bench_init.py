#!/usr/bin/env python3
"""envd-init side by side with Horust and tini, in one run, each as a real PID 1.

Every init runs as PID 1 of its own PID namespace (unshare --fork --pid --mount-proc) with the
same service files (Horust's format, which envd-init accepts as is). Each round measures every
init once, the inits alternating (which goes first rotates round by round); each measure is
reported as min / median / max over the rounds, with the ratio of the medians envd-init / peer
(lower is better everywhere).

Usage: scripts/bench_init.py ENVD_INIT HORUST TINI [--repeat N] [--out FILE]
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time


def host_child(pid, timeout=10.0):
    """The pid of unshare's child (the namespace's PID 1) as the host sees it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
        except OSError:
            pass
        time.sleep(0.001)
    raise RuntimeError("init did not start")


def start(init_kind, binary, services_dir, main=None, workdir=None):
    cmd = ["unshare", "--fork", "--pid", "--mount-proc", "--kill-child"]
    if init_kind == "envd-init":
        cmd += [binary, "--services", services_dir, "--api-socket", os.path.join(workdir, "api.sock")]
    elif init_kind == "horust":
        cmd += [binary, "--services-path", services_dir, "--uds-folder-path", workdir]
    elif init_kind == "tini":
        cmd += [binary, "--"] + main
    env = dict(os.environ, ENVD_INIT_LOG="warn", HORUST_LOG="warn")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env)
    return p


def stop(p):
    try:
        p.kill()
    except ProcessLookupError:
        pass
    p.wait()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ctx_switches(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def services_sleepers(d, n=3):
    for i in range(n):
        write(os.path.join(d, f"s{i}.toml"), 'command = "sleep infinity"\n')


def wait_files(paths, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(os.path.exists(p) for p in paths):
            return True
        time.sleep(0.0005)
    return False


def measure_idle(kind, binary, tini_main=None):
    """(RSS KiB 1.5 s after start, context switches in the next 10 s)."""
    with tempfile.TemporaryDirectory() as work:
        sdir = os.path.join(work, "services")
        os.mkdir(sdir)
        services_sleepers(sdir)
        p = start(kind, binary, sdir, main=tini_main, workdir=work)
        try:
            pid = host_child(p.pid)
            time.sleep(1.5)
            rss = rss_kib(pid)
            c0 = ctx_switches(pid)
            time.sleep(10)
            return rss, ctx_switches(pid) - c0
        finally:
            stop(p)


def measure_start(kind, binary):
    """ms from start to all 3 services running."""
    with tempfile.TemporaryDirectory() as work:
        sdir = os.path.join(work, "services")
        os.mkdir(sdir)
        marks = []
        for i in range(3):
            m = os.path.join(work, f"up{i}")
            marks.append(m)
            write(os.path.join(sdir, f"s{i}.toml"),
                  f"command = \"/bin/sh -c 'touch {m}; exec sleep infinity'\"\n")
        t0 = time.perf_counter()
        p = start(kind, binary, sdir, workdir=work)
        try:
            if not wait_files(marks):
                raise RuntimeError(f"{kind}: services did not start")
            return (time.perf_counter() - t0) * 1000
        finally:
            stop(p)


def measure_restart(kind, binary, runs=12):
    with tempfile.TemporaryDirectory() as work:
        sdir = os.path.join(work, "services")
        os.mkdir(sdir)
        stamps = os.path.join(work, "stamps")
        write(os.path.join(sdir, "crash.toml"),
              f"command = \"/bin/sh -c 'date +%s%N >> {stamps}; exit 1'\"\n"
              "[restart]\nstrategy = \"always\"\nbackoff = \"0s\"\n")
        p = start(kind, binary, sdir, workdir=work)
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    with open(stamps) as f:
                        lines = f.read().split()
                    if len(lines) > runs:
                        break
                except OSError:
                    pass
                time.sleep(0.01)
        finally:
            stop(p)
        ns = [int(x) for x in lines[: runs + 1]]
        gaps = [(b - a) / 1e6 for a, b in zip(ns, ns[1:])]
        return statistics.median(gaps)


def measure_stop(kind, binary):
    """ms from SIGTERM to exit with a service that ignores SIGTERM (wait 1 s)."""
    with tempfile.TemporaryDirectory() as work:
        sdir = os.path.join(work, "services")
        os.mkdir(sdir)
        up = os.path.join(work, "up")
        write(os.path.join(sdir, "stubborn.toml"),
              f"command = \"/bin/sh -c 'trap \\\"\\\" TERM; touch {up}; while true; do sleep 0.05; done'\"\n"
              "[termination]\nwait = \"1s\"\n")
        p = start(kind, binary, sdir, workdir=work)
        try:
            pid = host_child(p.pid)
            wait_files([up])
            time.sleep(0.3)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGTERM)
            p.wait(timeout=30)
            return (time.perf_counter() - t0) * 1000
        finally:
            stop(p)


def fmt(v, unit):
    """One value, or min / median / max of a list of samples."""
    if v is None:
        return "n/a"
    if isinstance(v, list):
        lo, mid, hi = min(v), statistics.median(v), max(v)
        if isinstance(mid, float) or any(isinstance(x, float) for x in v):
            return f"{lo:,.1f} / {mid:,.1f} / {hi:,.1f} {unit}".strip()
        return f"{lo:,} / {mid:,} / {hi:,} {unit}".strip()
    if isinstance(v, float):
        return f"{v:,.1f} {unit}".strip()
    return f"{v:,} {unit}".strip()


def median(v):
    return statistics.median(v) if isinstance(v, list) else v


def ratio(a, b):
    if a is None or b is None:
        return "n/a"
    a, b = median(a), median(b)
    if b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("envd_init")
    ap.add_argument("horust")
    ap.add_argument("tini")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()

    inits = {"envd-init": a.envd_init, "horust": a.horust, "tini": a.tini}
    res = {k: {"size": os.path.getsize(b), "rss": [], "wake": [], "start": [], "restart": [], "stop": []}
           for k, b in inits.items()}
    for i in range(a.repeat):
        order = list(inits)[i % 3:] + list(inits)[:i % 3]
        for kind in order:
            r, binary = res[kind], inits[kind]
            main = ["sleep", "infinity"] if kind == "tini" else None
            rss, wake = measure_idle(kind, binary, tini_main=main)
            r["rss"].append(rss)
            r["wake"].append(wake)
            if kind == "tini":
                continue
            r["start"].extend(measure_start(kind, binary) for _ in range(2))
            r["restart"].append(measure_restart(kind, binary))
            r["stop"].append(measure_stop(kind, binary))
    t = res["tini"]
    for key in ["start", "restart", "stop"]:
        t[key] = None
    e, h = res["envd-init"], res["horust"]
    rows = [
        ("binary size (static envd-init; Horust dynamic)", "size", "B"),
        ("idle RSS of the init, 3 services (tini: 1 child)", "rss", "KiB"),
        ("wakeups (context switches) in 10 s idle", "wake", ""),
        ("start to all 3 services running", "start", "ms"),
        ("restart latency after a crash, backoff 0 (each round: the median of 12 gaps)", "restart", "ms"),
        ("stop of a service ignoring SIGTERM, wait 1 s", "stop", "ms"),
    ]
    out = []
    out.append(f"{a.repeat} rounds, the inits alternating; min / median / max, ratios of the medians.")
    out.append("")
    out.append("| measure | envd-init | Horust 0.1.13 | tini | envd-init / Horust | envd-init / tini |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for label, key, unit in rows:
        out.append(
            f"| {label} | {fmt(e.get(key), unit)} | {fmt(h.get(key), unit)} | {fmt(t.get(key), unit)} "
            f"| {ratio(e.get(key), h.get(key))} | {ratio(e.get(key), t.get(key))} |"
        )
    text = "\n".join(out) + "\n"
    print(text)
    if a.out:
        write(a.out, text)


if __name__ == "__main__":
    main()
