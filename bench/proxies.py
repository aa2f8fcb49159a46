"""Configuration of the reference proxies (Debian's NGINX and HAProxy) for the benchmark and tests."""

from __future__ import annotations

from pathlib import Path

NGINX_CONF = """
worker_processes 1;
daemon off;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {rlimit_nofile};
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp-body;
    proxy_temp_path {prefix}/tmp-proxy;
    fastcgi_temp_path {prefix}/tmp-fastcgi;
    uwsgi_temp_path {prefix}/tmp-uwsgi;
    scgi_temp_path {prefix}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{backend_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout {read_timeout};
            proxy_send_timeout {read_timeout};
            proxy_buffering off;
        }}
    }}
}}
"""

HAPROXY_CONF = """
global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend ws
    bind 127.0.0.1:{port}
    default_backend app
backend app
    server app1 127.0.0.1:{backend_port}
"""


def nginx_command(prefix: Path, port: int, backend_port: int, read_timeout: str = "60s",
                  worker_connections: int = 8192) -> list[str]:
    """Write an NGINX config (one worker, WebSocket proxying) under ``prefix`` and return its command.

    Each proxied WebSocket holds two of the worker's ``worker_connections`` (client and upstream):
    the reconnect storm (bench/storm.py) raises it for its thousands of sessions, and the worker's
    fd limit with it.
    """
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, backend_port=backend_port,
                                      read_timeout=read_timeout, worker_connections=worker_connections,
                                      rlimit_nofile=max(16384, worker_connections + 1024)))
    return [system_binary("nginx"), "-c", str(conf), "-p", str(prefix)]


def haproxy_command(prefix: Path, port: int, backend_port: int) -> list[str]:
    """Write an HAProxy config (one thread) under ``prefix`` and return its command."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(port=port, backend_port=backend_port))
    return [system_binary("haproxy"), "-f", str(conf), "-db"]


def system_binary(name: str) -> str:
    """Path of a Debian-installed server binary; raises when missing (never skipped)."""
    import shutil

    for candidate in (shutil.which(name), f"/usr/sbin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError(f"{name} is not installed: run ./scripts/install-system-deps.sh (make test does)")
