#!/usr/bin/env python3
"""`envd up` on a real Kubernetes cluster (scripts/kube-up) with the image already pushed, side by
side with the cluster alone running the same image.

For each round: `envd down` (volumes kept), then `envd up --detach`, measured from its start:
  - ssh_ready: the first successful `ssh NAME.envd true` through envd's ProxyCommand (polled by a
    separate client every 20 ms);
  - all_healthy: `envd up` returning (it returns once every service is healthy);
and, as `envd up` reports it, from the pod's container being seen running to sshd ready.
The peer is the cluster alone: `kubectl run --restart=Never --command -- sleep` of the same
image, then `kubectl wait --for=condition=Ready` (create, schedule, start), then its deletion.

Latency: `ssh NAME.envd true` through the API server's port-forward (ProxyCommand envd
kube-proxy, to envd-sshd in the pod) vs `ssh 127.0.0.1 true` to Debian's OpenSSH sshd on this
machine (no port-forward), same client.

Usage: scripts/bench_kube.py ENVD [--runs N] [--out FILE]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sshd import Server  # noqa: E402

PROGRAM = """# syntax=v1
def build():
    base(image="debian:bookworm", dev=True)
    install.python()
    install.python_packages(name=["numpy"])
    config.jupyter(port=0)
"""


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def must(cmd, **kw):
    r = run(cmd, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("envd")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    kubeconfig = must(["scripts/kube-up"]).strip().splitlines()[-1]
    registry = open(os.path.join(os.path.dirname(kubeconfig), "registry")).read().strip()
    work = tempfile.mkdtemp(prefix="envd-bench-kube")
    env = dict(os.environ, ENVD_CONFIG_DIR=os.path.join(work, "config"),
               ENVD_SSH_CONFIG=os.path.join(work, "ssh_user_config"))
    ns = f"envd-bench-{os.getpid()}"
    kubectl = ["kubectl", "--kubeconfig", kubeconfig, "-n", ns]
    must(["kubectl", "--kubeconfig", kubeconfig, "create", "namespace", ns])
    project = os.path.join(work, "kbench")
    os.makedirs(project)
    open(os.path.join(project, "build.envd"), "w").write(PROGRAM)
    envd = lambda *args: run([a.envd, *args], env=env)  # noqa: E731
    must([a.envd, "context", "create", "--name", "bench", "--builder", "moby-worker", "--runner",
          "kubernetes", "--kubeconfig", kubeconfig, "--namespace", ns, "--registry", registry,
          "--use"], env=env)
    ssh = ["ssh", "-F", env["ENVD_SSH_CONFIG"], "-o", "BatchMode=yes", "kbench.envd", "true"]
    try:
        r = envd("up", "--path", project, "--detach")  # build and push once (not measured)
        if r.returncode != 0:
            raise SystemExit(f"envd up failed:\n{r.stdout}{r.stderr}")
        image = must(kubectl + ["get", "pod", "kbench-root", "-o",
                                "jsonpath={.spec.containers[0].image}"])
        ssh_ready, all_healthy, inside_ssh, inside_all, alone = [], [], [], [], []

        def envd_round():
            envd("down", "--name", "kbench")
            t0 = time.monotonic()
            proc = subprocess.Popen([a.envd, "up", "--path", project, "--detach"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            first = [None]

            def poll():
                while first[0] is None and time.monotonic() - t0 < 180:
                    if run(ssh + ["-o", "ConnectTimeout=3"]).returncode == 0:
                        first[0] = time.monotonic() - t0
                        return
                    time.sleep(0.02)

            poller = threading.Thread(target=poll)
            poller.start()
            out, _ = proc.communicate()
            all_healthy.append(time.monotonic() - t0)
            poller.join()
            if proc.returncode != 0 or first[0] is None:
                raise SystemExit(f"envd up failed:\n{out}")
            ssh_ready.append(first[0])
            m = re.search(r"every service healthy ([\d.]+)s after the start, sshd after ([\d.]+)s", out)
            inside_all.append(float(m.group(1)))
            inside_ssh.append(float(m.group(2)))

        def alone_round(i):
            # The peer: the same image, the cluster alone.
            pod = f"alone-{i}"
            t = time.monotonic()
            must(kubectl + ["run", pod, "--image", image, "--restart=Never",
                            "--image-pull-policy=IfNotPresent", "--command", "--", "sleep", "3600"])
            must(kubectl + ["wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=120s"])
            alone.append(time.monotonic() - t)
            must(kubectl + ["delete", "pod", pod, "--grace-period=0", "--force"])

        for i in range(a.runs):
            # Which side goes first alternates round by round.
            if i % 2 == 0:
                envd_round()
                alone_round(i)
            else:
                alone_round(i)
                envd_round()

        # ssh latency: through the port-forward vs a local OpenSSH, one of each in turn.
        subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", os.path.join(work, "id")],
                       check=True)
        os.rename(os.path.join(work, "id.pub"), os.path.join(work, "authorized_keys"))
        srv = Server("openssh", "/usr/sbin/sshd", work)
        kube_lat, local_lat = [], []
        try:
            for _ in range(20):
                t = time.perf_counter()
                must(ssh)
                kube_lat.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                subprocess.run(srv.ssh("chacha20-poly1305@openssh.com", "127.0.0.1", "true"),
                               check=True, stdin=subprocess.DEVNULL)
                local_lat.append((time.perf_counter() - t) * 1000)
        finally:
            srv.stop()
    finally:
        envd("down", "--name", "kbench", "--volumes")
        run(["kubectl", "--kubeconfig", kubeconfig, "delete", "namespace", ns, "--wait=false"])

    def spread(xs, f="{:.2f}"):
        return " / ".join(f.format(v) for v in (min(xs), median(xs), max(xs)))

    lines = [
        f"# envd up on Kubernetes ({a.runs} rounds, the two sides alternating which goes first; "
        "min / median / max; image already pushed)",
        "",
        "| | envd up (cluster runner) | cluster alone (kubectl run + wait Ready) | ratio (medians) |",
        "|---|---|---|---|",
        f"| start to SSH-ready (ssh NAME.envd true succeeds) | {spread(ssh_ready)} s | | |",
        f"| start to every service healthy (envd up returns) | {spread(all_healthy)} s | "
        f"{spread(alone)} s | {median(all_healthy) / median(alone):.2f}x |",
        f"| container running to sshd ready (as envd up reports) | {spread(inside_ssh)} s | | |",
        f"| container running to all healthy (as envd up reports) | {spread(inside_all)} s | | |",
        "",
        "| ssh latency (20 runs each, alternating; min / median / max) | through the port-forward "
        "| local OpenSSH sshd | ratio (medians) |",
        "|---|---|---|---|",
        f"| `ssh HOST true` | {spread(kube_lat, '{:.0f}')} ms | {spread(local_lat, '{:.0f}')} ms | "
        f"{median(kube_lat) / median(local_lat):.2f}x |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        open(a.out, "w").write(text)


if __name__ == "__main__":
    main()
