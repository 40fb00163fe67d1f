#!/usr/bin/env python3
"""Evaluate-and-compile time over envd's public build files: our `envd debug llb` side by side
with envd 1.3.6's (from PyPI), each file run by both in the same round.

envd 1.3.6 resolves the base image's config from its registry; no registry is reachable here, so
scripts/bench_registry.py stands in for them (an HTTPS proxy given to envd 1.3.6 alone through
HTTPS_PROXY, its certificate trusted through SSL_CERT_FILE). Each file is copied alone into a
directory as build.envd; a file counts when both programs print LLB for it, and the files only
one of them compiles are listed.

Usage: scripts/bench_compile.py OUR_ENVD ENVD_1_3_6 CORPUS_DIR [--runs N] [--out FILE]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time


def timed(cmd, cwd, env):
    t = time.monotonic()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.monotonic() - t, r


def spread(times, files):
    """min / median / max of the files' median times, in ms."""
    xs = [times[f] * 1000 for f in files]
    if not xs:
        return "n/a"
    return f"{min(xs):.1f} / {statistics.median(xs):.1f} / {max(xs):.1f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("theirs")
    ap.add_argument("corpus")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    a.ours, a.theirs = os.path.abspath(a.ours), os.path.abspath(a.theirs)
    a.corpus = os.path.abspath(a.corpus)

    work = tempfile.mkdtemp(prefix="envd-bench-compile-")
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    sans = ",".join(f"DNS:{h}" for h in [
        "registry-1.docker.io", "index.docker.io", "auth.docker.io", "docker.io",
        "ghcr.io", "nvcr.io", "quay.io", "gcr.io"])
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=envd-bench-registry", "-addext", f"subjectAltName={sans}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "extendedKeyUsage=serverAuth"],
        check=True, capture_output=True)
    bundle = os.path.join(work, "bundle.pem")
    with open(bundle, "w") as out:
        for p in ["/etc/ssl/certs/ca-certificates.crt", cert]:
            with open(p) as f:
                out.write(f.read())
    port_file = os.path.join(work, "port")
    here = os.path.dirname(os.path.abspath(__file__))
    registry = subprocess.Popen(
        ["python3", os.path.join(here, "bench_registry.py"), cert, key, port_file])
    try:
        for _ in range(100):
            if os.path.exists(port_file) and open(port_file).read():
                break
            time.sleep(0.05)
        port = open(port_file).read()
        theirs_env = dict(os.environ, HTTPS_PROXY=f"http://127.0.0.1:{port}",
                          https_proxy=f"http://127.0.0.1:{port}", SSL_CERT_FILE=bundle,
                          ENVD_ANALYTICS="false", NO_PROXY="", no_proxy="")
        ours_env = dict(os.environ)

        files = sorted(f for f in os.listdir(a.corpus) if f.endswith(".envd"))
        both, only_ours, only_theirs, neither = [], [], [], []
        t_ours, t_theirs = {}, {}
        errors = {}
        for name in files:
            d = os.path.join(work, "p", name[:-5])
            os.makedirs(d)
            shutil.copy(os.path.join(a.corpus, name), os.path.join(d, "build.envd"))
            ours, theirs = [], []
            ok_o = ok_t = True
            for _ in range(a.runs):
                dt, r = timed([a.ours, "debug", "llb", "--path", d], d, ours_env)
                ok_o = ok_o and r.returncode == 0
                ours.append(dt)
                if r.returncode != 0:
                    errors.setdefault(name, {})["ours"] = r.stderr.strip().splitlines()[-1:]
                dt, r = timed([a.theirs, "debug", "llb", "--path", d], d, theirs_env)
                ok_t = ok_t and r.returncode == 0
                theirs.append(dt)
                if r.returncode != 0:
                    errors.setdefault(name, {})["theirs"] = r.stderr.strip().splitlines()[-1:]
            t_ours[name], t_theirs[name] = statistics.median(ours), statistics.median(theirs)
            {(True, True): both, (True, False): only_ours, (False, True): only_theirs,
             (False, False): neither}[(ok_o, ok_t)].append(name)
    finally:
        registry.kill()
        shutil.rmtree(work, ignore_errors=True)

    so = sum(t_ours[f] for f in both)
    st = sum(t_theirs[f] for f in both)
    per_o = statistics.median([t_ours[f] for f in both]) if both else float("nan")
    per_t = statistics.median([t_theirs[f] for f in both]) if both else float("nan")
    lines = [
        f"`envd debug llb` over {len(files)} corpus files, median of {a.runs} runs per file "
        f"(process start, evaluation, compilation, printing):",
        "",
        "| | envd-rs | envd 1.3.6 | ratio |",
        "|---|---|---|---|",
        f"| files compiled by both ({len(both)}): total | {so * 1000:.0f} ms | {st * 1000:.0f} ms | "
        f"{so / st if st else float('nan'):.3f}x |",
        f"| per file (median) | {per_o * 1000:.1f} ms | {per_t * 1000:.1f} ms | "
        f"{per_o / per_t if per_t else float('nan'):.3f}x |",
        f"| per file, min / median / max over the files | {spread(t_ours, both)} | "
        f"{spread(t_theirs, both)} | |",
        "",
        f"Compiled by envd-rs only: {len(only_ours)}; by envd 1.3.6 only: {len(only_theirs)}; "
        f"by neither: {len(neither)}.",
    ]
    for title, group in [("envd 1.3.6 only", only_theirs), ("envd-rs only", only_ours),
                         ("neither", neither)]:
        for f in group:
            why = errors.get(f, {})
            lines.append(f"- {title}: {f}: ours: {' '.join(why.get('ours', ['ok']))[:160]}; "
                         f"envd 1.3.6: {' '.join(why.get('theirs', ['ok']))[:160]}")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
