#!/usr/bin/env python3
"""`envd lsp` as an editor meets it, beside starlark's own server (`starlark --lsp` from the
starlark_bin crate: the same protocol library, without envd's API and evaluation; envd's own
language server is a download from GitHub, not reachable here).

Rows (min / median / max over the rounds; the two servers alternate, each started afresh):
  - start: process start to the `initialize` answer;
  - diagnostics: a whole-document change of a 200-line build file to its diagnostics
    (alternately a version with an error and one without, so every change is new work);
  - completion: after `install.` (envd's members; starlark's globals there);
  - hover: over `base`.

Usage: scripts/bench_lsp.py ENVD STARLARK [--rounds N] [--out FILE]
"""

import argparse
import json
import os
import queue
import statistics
import subprocess
import tempfile
import threading
import time


def build_file():
    """A 200-line build file of the kind the corpus holds, in functions that call each other."""
    lines = ["# syntax=v1", "", '"""A long project build file."""', ""]
    for n in range(22):
        lines += [
            f"def part_{n}():",
            f'    """Part {n} of the environment."""',
            f'    install.apt_packages(name = ["pkg-{n}-a", "pkg-{n}-b"])',
            f'    install.python_packages(name = ["lib{n}>=1.{n}", "tool{n}"])',
            f'    runtime.environ(env = {{"PART_{n}": "{n}"}})',
            f'    runtime.expose(envd_port = {8000 + n}, host_port = 0, service = "svc{n}")',
            "",
        ]
    lines += ["def build():", '    base(dev = True)', '    install.python(version = "3.11")']
    lines += [f"    part_{n}()" for n in range(22)]
    lines += ["    config.jupyter()", "    install.python_packages()"]
    while len(lines) < 200:
        lines.insert(-2, "    # more to come")
    assert len(lines) == 200, len(lines)
    return "\n".join(lines) + "\n"


class Server:
    def __init__(self, cmd, root):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, cwd=root)
        self.q = queue.Queue()
        self.next_id = 1
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        out = self.p.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.q.put(json.loads(out.read(length)))

    def send(self, msg):
        body = json.dumps(msg).encode()
        self.p.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.p.stdin.flush()

    def wait(self, pred, what):
        end = time.monotonic() + 30
        while True:
            try:
                msg = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise SystemExit(f"no {what} within 30 s")
            if pred(msg):
                return msg

    def request(self, method, params):
        i = self.next_id
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
        return self.wait(lambda m: m.get("id") == i and "method" not in m, method)

    def notify(self, method, params):
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def stop(self):
        self.request("shutdown", None)
        self.notify("exit", None)
        self.p.stdin.close()
        self.p.wait(timeout=10)


def one_round(cmd, root, uri, text, broken, typing, samples):
    t0 = time.monotonic()
    s = Server(cmd, root)
    s.request("initialize", {"processId": None, "rootUri": f"file://{root}", "capabilities": {},
                             "workspaceFolders": [{"uri": f"file://{root}", "name": "p"}]})
    samples["start"].append(time.monotonic() - t0)
    s.notify("initialized", {})
    is_diag = lambda m: m.get("method") == "textDocument/publishDiagnostics"
    s.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "starlark",
                                                       "version": 1, "text": text}})
    s.wait(is_diag, "diagnostics")
    for v in range(2, 12):
        body = broken if v % 2 == 0 else text
        t0 = time.monotonic()
        s.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": v},
                                            "contentChanges": [{"text": body}]})
        got = s.wait(is_diag, "diagnostics")
        samples["diagnostics"].append(time.monotonic() - t0)
        if cmd[-1] == "lsp":  # envd: the broken version has exactly its one error
            found = len(got["params"]["diagnostics"])
            if found != (1 if body is broken else 0):
                raise SystemExit(f"envd lsp: {found} diagnostics for version {v}: {got}")
    # Typing `install.` on the last line: the file does not parse until the name is there.
    s.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 20},
                                        "contentChanges": [{"text": typing}]})
    s.wait(is_diag, "diagnostics")
    lines = typing.splitlines()
    at = next(i for i, l in enumerate(lines) if l.strip() == "install.")
    base = next(i for i, l in enumerate(lines) if "base(" in l)
    for _ in range(5):
        t0 = time.monotonic()
        r = s.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                  "position": {"line": at, "character": 12}})
        samples["completion"].append(time.monotonic() - t0)
        t0 = time.monotonic()
        s.request("textDocument/hover", {"textDocument": {"uri": uri},
                                         "position": {"line": base, "character": 5}})
        samples["hover"].append(time.monotonic() - t0)
    items = r.get("result") or []
    items = items.get("items", []) if isinstance(items, dict) else items
    samples.setdefault("completion items", []).append(len(items))
    s.stop()


def spread(xs, ms=True):
    f = (lambda x: f"{x * 1000:.1f}") if ms else (lambda x: f"{x:.0f}")
    return f"{f(statistics.median(xs))} ({f(min(xs))} / {f(max(xs))})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("envd")
    ap.add_argument("starlark")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench-lsp-")
    # The broken version has an error only evaluation finds (a misspelt function, the last
    # thing build() calls), so every change is evaluated in full.
    text = build_file()
    broken = text.replace("install.python_packages()\n", "install.pythn_packages()\n")
    typing = text.replace("install.python_packages()\n", "install.\n")
    path = os.path.join(root, "build.envd")
    with open(path, "w") as f:
        f.write(text)
    uri = f"file://{path}"
    sides = {"envd lsp": [os.path.abspath(a.envd), "lsp"],
             "starlark --lsp": [os.path.abspath(a.starlark), "--lsp"]}
    samples = {k: {"start": [], "diagnostics": [], "completion": [], "hover": []} for k in sides}
    for i in range(a.rounds):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for side in order:
            one_round(sides[side], root, uri, text, broken, typing, samples[side])
    ours, theirs = samples["envd lsp"], samples["starlark --lsp"]
    rows = [
        "| request (ms, median (min / max)) | envd lsp | starlark --lsp | envd / starlark |",
        "|---|---|---|---|",
    ]
    for key in ["start", "diagnostics", "completion", "hover"]:
        ratio = statistics.median(ours[key]) / statistics.median(theirs[key])
        rows.append(f"| {key} | {spread(ours[key])} | {spread(theirs[key])} | {ratio:.2f}x |")
    rows.append(f"| completion items after `install.` | {ours['completion items'][0]} | "
                f"{theirs['completion items'][0]} | |")
    report = "\n".join(rows) + f"\n\n{len(text.splitlines())}-line build file, {a.rounds} rounds.\n"
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
