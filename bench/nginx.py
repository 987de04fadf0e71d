"""nginx as a reference reverse proxy: one worker process on loopback in front of a bench upstream.

The proxy benchmarks compare against it: the same upstream, the same wrk load, nginx doing what the proxy's
forwarding does (keep-alive HTTP/1.1 both ways, X-Forwarded-For and Host passed on, no buffering to disk for
these small bodies) but nothing of its admission work. One worker, because the proxy is one Trio thread.

nginx is installed with apt (`nginx-light`) when it is missing and the bench runs as root; otherwise
`ensure_nginx` says what to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bench.common import LOOPBACK, free_loopback_port, running_command

APT_PACKAGE = "nginx-light"
# Idle upstream connections each worker keeps (nginx's `keepalive`): above any connection count the bench uses.
UPSTREAM_KEEPALIVE = 128


def ensure_nginx() -> str:
    """The nginx binary, installed with apt first if it is missing (as root only)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"nginx is not installed (apt-get install {APT_PACKAGE})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", APT_PACKAGE], check=True, env=env, capture_output=True)
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        raise RuntimeError(f"apt-get install {APT_PACKAGE} did not provide nginx")
    return found


def nginx_config(prefix: Path, listen_port: int, upstream: str) -> str:
    """A complete nginx.conf: one worker, no access log, everything it writes kept under `prefix`."""
    upstream_host_port = upstream.removeprefix("http://")
    return f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream bench_upstream {{
        server {upstream_host_port};
        keepalive {UPSTREAM_KEEPALIVE};
    }}
    server {{
        listen {LOOPBACK}:{listen_port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


@contextlib.contextmanager
def running_nginx(scratch: Path, upstream: str) -> Iterator[str]:
    """Run nginx in front of `upstream` (http://host:port) until the block ends; yields its base URL."""
    binary = ensure_nginx()
    prefix = scratch / "nginx"
    prefix.mkdir(exist_ok=True)
    prefix.chmod(0o777)  # its worker may run as another user (nobody) when the bench runs as root
    port = free_loopback_port()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, port, upstream))
    url = f"http://{LOOPBACK}:{port}"
    with running_command([binary, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")], url + "/"):
        yield url
