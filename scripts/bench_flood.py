#!/usr/bin/env python3
"""envd-sshd and OpenSSH's sshd under connection floods, side by side, each with its own default
limits (OpenSSH: MaxStartups 10:30:100, LoginGraceTime 120; envd-sshd: 16 slots, 60 s grace,
silent slot holders evicted after 5 s while others wait).

1. silent flood: SILENT connections send only `SSH-2.0-x` and stay open; then a real OpenSSH
   login is tried ATTEMPTS times (one after the other): how many get in, and how long they take.
2. login storm: STORM real OpenSSH logins started at once: how many get in, and the wall time.

Each round runs both servers, the order alternating; every figure is min / median / max over
the rounds.

Usage: scripts/bench_flood.py ENVD_SSHD [--silent 32] [--attempts 5] [--storm 200] [--rounds 3]
                              [--out F]
"""

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time

from bench_sshd import Server, openssh_version

CIPHER = "chacha20-poly1305@openssh.com"


def silent_flood(srv, silent, attempts):
    held = []
    for _ in range(silent):
        c = socket.create_connection(("127.0.0.1", srv.port))
        c.sendall(b"SSH-2.0-x\r\n")
        held.append(c)
    time.sleep(0.5)
    ok, first = 0, None
    for _ in range(attempts):
        t = time.perf_counter()
        p = subprocess.run(srv.ssh(CIPHER, "-o", "ConnectTimeout=90", "127.0.0.1", "echo in"),
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=150)
        if p.stdout == "in\n":
            ok += 1
            first = first if first is not None else time.perf_counter() - t
    for c in held:
        c.close()
    return ok, (first if first is not None else float("nan"))


def storm(srv, n):
    t = time.perf_counter()
    procs = [subprocess.Popen(srv.ssh(CIPHER, "127.0.0.1", f"echo {i}"), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
             for i in range(n)]
    ok = sum(1 for i, p in enumerate(procs) if p.communicate()[0] == f"{i}\n")
    return ok, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("envd_sshd")
    ap.add_argument("--openssh", default="/usr/sbin/sshd")
    ap.add_argument("--silent", type=int, default=32)
    ap.add_argument("--attempts", type=int, default=5)
    ap.add_argument("--storm", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="envd-bench-flood-")
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", os.path.join(work, "id")], check=True)
    os.rename(os.path.join(work, "id.pub"), os.path.join(work, "authorized_keys"))
    servers = {"envd": a.envd_sshd, "openssh": a.openssh}
    res = {kind: {"in": [], "first": [], "storm_in": [], "storm_wall": []} for kind in servers}
    for i in range(a.rounds):
        order = list(servers) if i % 2 == 0 else list(reversed(servers))
        for kind in order:
            srv = Server(kind, servers[kind], work, default_limits=True)
            try:
                got_in, first = silent_flood(srv, a.silent, a.attempts)
            finally:
                srv.stop()
            srv = Server(kind, servers[kind], work, default_limits=True)
            try:
                storm_in, wall = storm(srv, a.storm)
            finally:
                srv.stop()
            for key, value in (("in", got_in), ("first", first), ("storm_in", storm_in),
                               ("storm_wall", wall)):
                res[kind][key].append(value)

    def spread(xs, fmt):
        xs = [x for x in xs if x == x]  # a round where nobody got in has no time
        if not xs:
            return "none got in"
        return " / ".join(fmt.format(v) for v in (min(xs), statistics.median(xs), max(xs)))

    e, o = res["envd"], res["openssh"]
    lines = [
        f"{a.rounds} rounds, the two servers alternating; min / median / max.",
        "",
        f"| measure (default limits) | envd-sshd | OpenSSH {openssh_version()} |",
        "|---|---:|---:|",
        f"| real logins (of {a.attempts}) that got in with {a.silent} silent connections open | "
        f"{spread(e['in'], '{:.0f}')} | {spread(o['in'], '{:.0f}')} |",
        f"| time the first of them that got in took (s) | {spread(e['first'], '{:.1f}')} | "
        f"{spread(o['first'], '{:.1f}')} |",
        f"| {a.storm} logins started at once that got in | {spread(e['storm_in'], '{:.0f}')} | "
        f"{spread(o['storm_in'], '{:.0f}')} |",
        f"| wall time for the {a.storm} (s) | {spread(e['storm_wall'], '{:.1f}')} | "
        f"{spread(o['storm_wall'], '{:.1f}')} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
