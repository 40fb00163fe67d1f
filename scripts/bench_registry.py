#!/usr/bin/env python3
"""A stand-in for the public registries, for benchmarking envd 1.3.6 without the internet.

envd 1.3.6 resolves the base image's config from its registry before it prints any LLB. This
process is an HTTPS proxy (set HTTPS_PROXY=http://127.0.0.1:PORT for envd only): it answers every
CONNECT itself, terminates TLS with a certificate for the registries' names (trusted through
SSL_CERT_FILE, never system-wide), and serves one image (a Debian config, no layers are ever
fetched) under every repository and tag: the Docker Registry v2 API's /v2/, manifests and blobs.

Usage: scripts/bench_registry.py CERT KEY PORT_FILE
Writes the port it listens on to PORT_FILE and serves until killed.
"""

import hashlib
import http.server
import json
import socket
import ssl
import sys
import threading

CONFIG = json.dumps({
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["bash"],
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
}).encode()
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
MANIFEST = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": len(CONFIG),
        "digest": CONFIG_DIGEST,
    },
    "layers": [{
        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "size": 32,
        "digest": "sha256:" + "1" * 64,
    }],
}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


class Registry(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body=b"", ctype="application/json", digest=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path in ("/v2/", "/v2"):
            return self.reply(200, b"{}")
        if "/manifests/" in path:
            return self.reply(200, MANIFEST,
                              "application/vnd.docker.distribution.manifest.v2+json", MANIFEST_DIGEST)
        if "/blobs/" in path and path.endswith(CONFIG_DIGEST):
            return self.reply(200, CONFIG, "application/octet-stream", CONFIG_DIGEST)
        return self.reply(404, b'{"errors":[{"code":"NOT_FOUND"}]}')

    do_HEAD = do_GET


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    tls = None

    def log_message(self, *args):
        pass

    def do_CONNECT(self):
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        try:
            conn = self.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            self.close_connection = True
            return
        Registry(conn, self.client_address, self.server)
        self.close_connection = True


def main():
    cert, key, port_file = sys.argv[1:4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    Proxy.tls = ctx
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True
    with open(port_file, "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    threading.current_thread().name = "registry"
    main()
