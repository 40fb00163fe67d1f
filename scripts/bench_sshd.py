#!/usr/bin/env python3
"""envd-sshd side by side with Debian's OpenSSH sshd, in one run, same client, same cipher and
the same key exchange (OpenSSH would pick sntrup761x25519 with itself and curve25519 with
envd-sshd: different work, so both are pinned to curve25519-sha256).

Both servers listen on 127.0.0.1, accept the same ed25519 key and run sessions as the same user.
Every measure alternates the two servers run by run and reports min / median / max.
Measures: `ssh host true` latency; download (`head -c N /dev/zero` remote -> local) and
upload (`cat > /dev/null` remote) throughput; `ssh -L` forwarding throughput; memory per idle
session (PSS of all server processes, 50 sessions). Ratios are envd-sshd / OpenSSH.

Usage: scripts/bench_sshd.py ENVD_SSHD [--cipher C] [--runs N] [--mib N] [--sessions N] [--out F]
"""

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} never opened")


class Server:
    def __init__(self, kind, binary, work, default_limits=False):
        """default_limits: each server's own defaults for unauthenticated connections (OpenSSH
        MaxStartups 10:30:100, envd-sshd 16 slots) instead of 100 for both."""
        self.kind, self.port, self.work = kind, free_port(), work
        startups = "" if default_limits else "MaxStartups 100\n"
        if kind == "openssh":
            os.makedirs("/run/sshd", exist_ok=True)
            hk = os.path.join(work, "openssh_host_key")
            if not os.path.exists(hk):
                subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", hk], check=True)
            cfg = os.path.join(work, "sshd_config")
            with open(cfg, "w") as f:
                f.write(
                    f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {hk}\n"
                    f"AuthorizedKeysFile {work}/authorized_keys\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
                    "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
                    f"AllowTcpForwarding yes\n{startups}MaxSessions 100\nLogLevel ERROR\n"
                    "PrintMotd no\nAcceptEnv LANG LC_*\n"
                )
            cmd = [binary, "-D", "-e", "-f", cfg]
        else:
            cmd = [binary, "--listen", f"127.0.0.1:{self.port}",
                   "--authorized-keys", os.path.join(work, "authorized_keys"),
                   "--host-key", os.path.join(work, "envd_host_key")]
            if not default_limits:
                cmd += ["--max-startups", "100"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(work, f"{kind}.log"), "w"))
        wait_port(self.port)
        time.sleep(0.3)

    def ssh(self, cipher, *extra):
        return ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", os.path.join(self.work, "id"),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-c", cipher,
                "-o", f"KexAlgorithms={KEX}", *extra]

    def pids(self):
        """The server and every descendant that is an sshd/envd-sshd process."""
        out = subprocess.run(["ps", "-eo", "pid=,ppid=,comm="], capture_output=True, text=True).stdout
        children = {}
        comm = {}
        for line in out.splitlines():
            pid, ppid, name = line.split(None, 2)
            children.setdefault(int(ppid), []).append(int(pid))
            comm[int(pid)] = name.strip()
        result, stack = [], [self.proc.pid]
        while stack:
            p = stack.pop()
            if "sshd" in comm.get(p, ""):
                result.append(p)
            stack.extend(children.get(p, []))
        return result

    def pss_kib(self):
        total = 0
        for p in self.pids():
            try:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


KEX = "curve25519-sha256"


def latency_ms(srv, cipher):
    t = time.perf_counter()
    subprocess.run(srv.ssh(cipher, "127.0.0.1", "true"), check=True, stdin=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000


def download_mibs(srv, cipher, mib):
    t = time.perf_counter()
    p = subprocess.run(srv.ssh(cipher, "127.0.0.1", f"head -c {mib}M /dev/zero"),
                       stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, check=True)
    dt = time.perf_counter() - t
    assert len(p.stdout) == mib * 1024 * 1024, len(p.stdout)
    return mib / dt


def upload_mibs(srv, cipher, mib):
    head = subprocess.Popen(["head", "-c", f"{mib}M", "/dev/zero"], stdout=subprocess.PIPE)
    t = time.perf_counter()
    subprocess.run(srv.ssh(cipher, "127.0.0.1", "cat > /dev/null"), stdin=head.stdout, check=True)
    dt = time.perf_counter() - t
    head.wait()
    return mib / dt


def sink_server():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]

    def serve():
        while True:
            c, _ = s.accept()
            def drain(c=c):
                n = 0
                while True:
                    b = c.recv(1 << 20)
                    if not b:
                        break
                    n += len(b)
                c.sendall(str(n).encode())
                c.close()
            threading.Thread(target=drain, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return port


def forward_mibs(srv, cipher, mib, sink):
    lport = free_port()
    fwd = subprocess.Popen(srv.ssh(cipher, "-N", "-o", "ExitOnForwardFailure=yes", "-L",
                                   f"{lport}:127.0.0.1:{sink}", "127.0.0.1"),
                           stdin=subprocess.DEVNULL)
    try:
        wait_port(lport)
        c = socket.create_connection(("127.0.0.1", lport))
        chunk = b"\0" * (1 << 20)
        t = time.perf_counter()
        for _ in range(mib):
            c.sendall(chunk)
        c.shutdown(socket.SHUT_WR)
        got = int(c.recv(64) or b"0")
        dt = time.perf_counter() - t
        c.close()
        assert got == mib * (1 << 20), got
        return mib / dt
    finally:
        fwd.terminate()
        fwd.wait()


def session_memory_kib(srv, cipher, sessions):
    base = srv.pss_kib()
    procs = [subprocess.Popen(srv.ssh(cipher, "127.0.0.1", "sleep 600"), stdin=subprocess.DEVNULL)
             for _ in range(sessions)]
    time.sleep(3 + sessions * 0.05)
    used = srv.pss_kib() - base
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    return used / sessions, base


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("envd_sshd")
    ap.add_argument("--openssh", default="/usr/sbin/sshd")
    ap.add_argument("--cipher", default="chacha20-poly1305@openssh.com")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--out")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="envd-bench-sshd-")
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", os.path.join(work, "id")], check=True)
    os.rename(os.path.join(work, "id.pub"), os.path.join(work, "authorized_keys"))
    sink = sink_server()
    servers = {"envd-sshd": Server("envd", a.envd_sshd, work), "openssh": Server("openssh", a.openssh, work)}
    res = {k: {} for k in servers}
    try:
        # Interleave the two servers run by run, which goes first alternating, so both see the
        # same machine state.
        def rounds(n, measure):
            samples = {k: [] for k in servers}
            for i in range(n):
                order = list(servers.items())
                for name, srv in (order if i % 2 == 0 else order[::-1]):
                    samples[name].append(measure(srv))
            return samples
        for key, samples in [
            ("latency", rounds(a.runs, lambda srv: latency_ms(srv, a.cipher))),
            ("download", rounds(a.repeat, lambda srv: download_mibs(srv, a.cipher, a.mib))),
            ("upload", rounds(a.repeat, lambda srv: upload_mibs(srv, a.cipher, a.mib))),
            ("forward", rounds(a.repeat, lambda srv: forward_mibs(srv, a.cipher, a.mib // 2, sink))),
        ]:
            for name in servers:
                res[name][key] = samples[name]
        for name, srv in servers.items():
            mem, idle = session_memory_kib(srv, a.cipher, a.sessions)
            res[name]["mem"], res[name]["idle"] = [mem], [idle]
    finally:
        for srv in servers.values():
            srv.stop()

    e, o = res["envd-sshd"], res["openssh"]
    rows = [
        ("`ssh host true` latency, %d runs" % a.runs, "latency", "ms", "lower"),
        ("download `head -c %dM /dev/zero`" % a.mib, "download", "MiB/s", "higher"),
        ("upload %d MiB into `cat > /dev/null`" % a.mib, "upload", "MiB/s", "higher"),
        ("`ssh -L` forwarding, %d MiB" % (a.mib // 2), "forward", "MiB/s", "higher"),
        ("memory per idle session (PSS, %d sessions)" % a.sessions, "mem", "KiB", "lower"),
        ("server memory with no session (PSS)", "idle", "KiB", "lower"),
    ]
    lines = ["| measure (%s, %s) | envd-sshd (min / median / max) | OpenSSH %s (min / median / max) | ratio of medians | better is |"
             % (a.cipher, KEX, openssh_version()),
             "|---|---:|---:|---:|---|"]

    def spread(xs, unit):
        if len(xs) == 1:
            return f"{xs[0]:,.1f} {unit}"
        return f"{min(xs):,.1f} / {statistics.median(xs):,.1f} / {max(xs):,.1f} {unit}"
    for label, key, unit, better in rows:
        ratio = statistics.median(e[key]) / statistics.median(o[key])
        lines.append(f"| {label} | {spread(e[key], unit)} | {spread(o[key], unit)} | {ratio:.2f}x | {better} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


def openssh_version():
    p = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
    return (p.stderr or p.stdout).split(",")[0].replace("OpenSSH_", "").strip()


if __name__ == "__main__":
    main()
