"""Command line: ``ws-gateway [--config FILE] [--listen HOST:PORT] ...`` and ``check-config``.

Exit status 2 means the configuration is invalid; the error names every
problem. Flags override ``GATEWAY_*`` variables, which override the file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvloop
import yaml

from gateway import __version__
from gateway.core.config import ConfigError, GatewayConfig, effective_config, load_config, unknown_environment
from gateway.core.units import format_size
from gateway.sessionlog import configure_logging

__all__ = ["main"]

logger = logging.getLogger("gateway.cli")

EXIT_BAD_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ws-gateway",
        usage="ws-gateway [--config FILE] [--listen HOST:PORT] [--upstream URL] [--admin-listen HOST:PORT] "
        "[--log-level LEVEL]\n       ws-gateway check-config FILE",
        description="WebSocket gateway sidecar: relays client WebSockets to an upstream app. "
        "'ws-gateway check-config FILE' validates a file and prints the effective configuration "
        "(GATEWAY_* environment variables applied).",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML configuration file (see config/gateway.yaml)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="traffic listener (default 0.0.0.0:8080)")
    parser.add_argument("--upstream", metavar="URL", help="upstream WebSocket base URL (default ws://127.0.0.1:8000)")
    parser.add_argument("--admin-listen", metavar="HOST:PORT", help="admin listener (default 0.0.0.0:9102)")
    parser.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error (default info)")
    parser.add_argument("--version", action="version", version=f"ws-gateway {__version__}")
    return parser


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.listen is not None:
        overrides["listen"] = args.listen
    if args.admin_listen is not None:
        overrides["admin_listen"] = args.admin_listen
    if args.log_level is not None:
        overrides["log_level"] = args.log_level
    if args.upstream is not None:
        overrides["upstream"] = {"url": args.upstream}
    return overrides


def _check_config(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="ws-gateway check-config", description="Validate a configuration file.")
    parser.add_argument("file", help="YAML configuration file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"ws-gateway: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    for warning in unknown_environment(os.environ):
        print(f"ws-gateway: warning: {warning}", file=sys.stderr)
    print(f"# {args.file}: valid. Effective configuration (GATEWAY_* variables applied):")
    print(f"# Check: upstream.max_message_size ({format_size(config.upstream.max_message_size)}) should be your "
          "app's own limit\n# (uvicorn --ws-max-size, default 16MiB; Daphne 1MiB): a larger message then gets "
          "1009 from the\n# gateway before any of it is sent, instead of a reset the gateway can only guess at "
          "(docs/reconnection.md).")
    print(yaml.safe_dump(effective_config(config), sort_keys=False), end="")
    return 0


def _run(config: GatewayConfig) -> int:
    from gateway.server import run_gateway

    configure_logging(config.log_level)
    for warning in unknown_environment(os.environ):
        logger.warning(warning)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_gateway(config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ws-gateway`` and ``python -m gateway``; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["check-config"]:
        return _check_config(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        config = load_config(args.config, overrides=_flag_overrides(args))
    except ConfigError as exc:
        print(f"ws-gateway: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        return _run(config)
    except OSError as exc:
        print(f"ws-gateway: cannot start: {exc}", file=sys.stderr)
        return 1
