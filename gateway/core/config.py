"""Gateway configuration: frozen dataclasses built in one validation pass.

Sources, lowest precedence first: built-in defaults, the YAML file,
``GATEWAY_*`` environment variables (``GATEWAY_CLIENT_PING_INTERVAL=15s``
sets ``client.ping_interval``; values are read as YAML scalars, so lists work
as ``[a, b]``), then command-line flags. :func:`load_config` gathers every
problem (unknown key, bad value, inconsistent pair) and raises one
:class:`ConfigError` listing them all, each naming the key, the value and
what is allowed. ``config/gateway.yaml`` documents every key shown here.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from gateway.core.delivery import DeliveryMode
from gateway.core.parsers import (
    Parser,
    boolean,
    choice,
    cidrs,
    close_codes,
    enum_choice,
    host_port,
    int_between,
    non_negative_int,
    non_negative_size,
    optional_duration,
    origins,
    parse_host_port,
    positive_duration,
    positive_int,
    positive_size,
    template,
    ws_urls,
)
from gateway.core.replay import OverflowPolicy
from gateway.core.targets import Selection
from gateway.core.units import format_duration, format_size, parse_duration

__all__ = [
    "ClientConfig",
    "CompressionConfig",
    "ConfigError",
    "DrainConfig",
    "GatewayConfig",
    "LegConfig",
    "ProxyConfig",
    "ReconnectConfig",
    "RefusalMode",
    "ResumeConfig",
    "UpstreamConfig",
    "effective_config",
    "load_config",
    "parse_host_port",
    "unknown_environment",
]

ENV_PREFIX: Final = "GATEWAY_"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


class RefusalMode(enum.Enum):
    """How an upstream's refusal of the upgrade reaches the client (``client.refusal``)."""

    STATUS = "status"
    """The same HTTP status (browsers only see a failed connection)."""
    CLOSE = "close"
    """The upgrade is accepted and closed with 4000 + status, so browsers can see why."""


class ConfigError(Exception):
    """One or more configuration problems; ``problems`` lists each as a sentence."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class LegConfig:
    """Settings shared by both legs; each describes what that leg's peer gets and must do."""

    ping_interval: float
    """Seconds between gateway pings on this leg (0 disables pings)."""
    ping_timeout: float
    """Seconds to wait for the pong before closing the leg (ping_timeout cause)."""
    ping_jitter: float
    """Up to this many seconds are taken off each interval at random, so pings spread out."""
    max_message_size: int
    """Largest message, in bytes, relayed to this leg's peer; larger ones close with 1009."""
    max_frame_size: int
    """Largest frame, in bytes, written to this peer; larger frames go as fragments."""
    max_buffered: int
    """Bytes that may wait unsent towards this peer before reading the other leg pauses."""


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """permessage-deflate (RFC 7692) on the client leg, terminated at the gateway (docs/design.md):
    the client's messages are inflated before they go upstream, the app's are deflated towards the
    client; the loopback leg to the app stays uncompressed."""

    enabled: bool
    """Accept a client's permessage-deflate offer (false: every offer is declined)."""
    server_max_window_bits: int
    """Window (log2 bytes) of the gateway's compressor; asked of the client in the response."""
    client_max_window_bits: int
    """Window asked of a client whose offer allows it (``client_max_window_bits``): the
    gateway's decompressor holds 2**bits bytes."""
    mem_level: int
    """zlib memLevel of the compressor (1-9): its hash tables take 2**(mem_level + 9) bytes."""
    min_size: int
    """The app's messages smaller than this go to the client uncompressed (RFC 7692 allows it
    message by message); 0 compresses every message."""
    level: int
    """zlib compression level of the compressor (1-9). 6, zlib's default, is what uvicorn's
    websockets uses, so the client gets the bytes a direct connection would; 1 costs about a quarter
    less CPU per chat-sized message for about an eighth more bytes (docs/benchmark.md)."""


@dataclass(frozen=True, slots=True)
class ClientConfig(LegConfig):
    """The client leg: browsers and other clients reaching the traffic port."""

    handshake_timeout: float
    """Seconds a connection has to send its whole request head (else 408), and then again for the
    upstream handshake (else 504)."""
    max_header_size: int
    """Largest request header block (and any single header line), in bytes."""
    allowed_origins: tuple[str, ...]
    """Origins allowed to connect (exact ``scheme://host[:port]``); empty allows all."""
    slow_consumer_timeout: float
    """Seconds a client may stay behind (buffer full) before it is closed with 1008."""
    close_timeout: float
    """Seconds to wait for a peer's close frame or TCP close after sending ours."""
    max_sessions_per_client: int
    """Sessions one client address (trusted-proxy aware) may hold; 0: no limit. Over it: 429."""
    refusal: RefusalMode
    """How an upstream handshake refusal reaches the client."""
    compression: CompressionConfig
    """permessage-deflate with clients that offer it."""


@dataclass(frozen=True, slots=True)
class UpstreamConfig(LegConfig):
    """The upstream leg: the FastAPI/uvicorn app on localhost."""

    url: tuple[str, ...]
    """``ws://host:port`` (or several); the client's path and query are appended."""
    connect_timeout: float
    """Seconds to open the TCP connection and finish the upstream handshake (all targets tried)."""
    selection: Selection
    """With several URLs: which target a new session tries first."""
    cooldown: float
    """Seconds a target that failed to connect is tried only after the others."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """What the gateway knows of the reverse proxy in front of it."""

    trusted_proxies: tuple[str, ...]
    """CIDRs whose X-Forwarded-* and X-Request-ID headers are believed."""
    idle_timeout: float | None
    """The front proxy's idle timeout in seconds; client pings must come sooner."""

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The trusted CIDRs parsed."""
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.trusted_proxies)


@dataclass(frozen=True, slots=True)
class DrainConfig:
    """Graceful shutdown on SIGTERM (defaults fit Kubernetes' 30 s grace period)."""

    listener_delay: float
    """Seconds between readiness going false and the listener closing."""
    spread: float
    """Window, in seconds, over which open sessions get their 1012 close."""
    timeout: float
    """Seconds from SIGTERM until the process exits, whatever is still open."""


@dataclass(frozen=True, slots=True)
class ReconnectConfig:
    """Holding clients while the upstream restarts or crashes."""

    enabled: bool
    """Reconnect the upstream leg instead of closing the client when the upstream goes away."""
    codes: frozenset[int]
    """Upstream close codes that are retried (1006: the connection dropped with no close frame)."""
    initial_backoff: float
    """Base of the exponential backoff, in seconds (full jitter; the first retry is immediate)."""
    max_backoff: float
    """Largest delay between attempts, in seconds."""
    give_up_after: float
    """Seconds an outage may last before the client is closed with 1013."""
    max_reconnects: int
    """Upstream losses one session may survive within breaker_window before it is closed with 1011."""
    breaker_window: float
    """Window of the per-session circuit breaker, in seconds."""
    buffer_messages: int
    """Client messages held during an outage."""
    buffer_bytes: int
    """Bytes of client messages held during an outage."""
    overflow: OverflowPolicy
    """``close``: a full buffer closes the client with 1013; ``drop_oldest``: oldest messages are dropped."""
    delivery: DeliveryMode
    """What happens to client messages the lost upstream had not confirmed (gateway.core.delivery)."""
    confirm_interval: float
    """Least seconds between two confirmation pings while client messages flow."""
    app_queue_messages: int
    """Confirmed client messages treated as possibly still in the app server's queue for the handler (a pong
    proves uvicorn read a message, not that the handler got it): re-sent (at_least_once) or counted as lost
    (``unhandled``) at an upstream loss. 0: trust the pong."""
    app_queue_bytes: int
    """at_least_once: most bytes of those messages kept to re-send; the rest are counted as ``unhandled``."""
    notify_loss: str
    """Opt-in text message sent to the client when its upstream is lost ("" = none); {session_id} is filled."""
    notify_resume: str
    """Opt-in text message sent when relaying resumes ("" = none); {session_id}, {outage_ms}, {replayed}, {lost}."""


@dataclass(frozen=True, slots=True)
class ResumeConfig:
    """Client resume (docs/resume.md): a resumable client that drops is waited for and spliced back in."""

    enabled: bool
    """Accept resumable sessions from clients that ask (others are unaffected either way)."""
    grace: float
    """Seconds the app's leg is kept open for a client that dropped without a close frame."""
    buffer_bytes: int
    """Bytes of the app's messages kept until the client confirms them (past it: no resume)."""
    confirm_interval: float
    """Least seconds between two confirmation pings to a resumable client while the app sends."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole, validated configuration."""

    listen: str
    admin_listen: str
    log_level: str
    max_sessions: int
    client: ClientConfig
    upstream: UpstreamConfig
    proxy: ProxyConfig
    drain: DrainConfig
    reconnect: ReconnectConfig
    resume: ResumeConfig


def _leg_schema(ping_interval: str, max_message: str) -> dict[str, tuple[Any, Parser]]:
    return {
        "ping_interval": (ping_interval, parse_duration),
        "ping_timeout": ("10s", positive_duration),
        "ping_jitter": ("2s", parse_duration),
        "max_message_size": (max_message, positive_size),
        "max_frame_size": ("1MiB", positive_size),
        "max_buffered": ("1MiB", positive_size),
    }


SCHEMA: Final[dict[str, Any]] = {
    "listen": ("0.0.0.0:8080", host_port),
    "admin_listen": ("0.0.0.0:9102", host_port),
    "log_level": ("info", choice(LOG_LEVELS)),
    "max_sessions": (10000, positive_int),
    "client": {
        **_leg_schema("20s", "16MiB"),
        "handshake_timeout": ("10s", positive_duration),
        "max_sessions_per_client": (0, non_negative_int),
        "max_header_size": ("16KiB", positive_size),
        "allowed_origins": ([], origins),
        "slow_consumer_timeout": ("30s", positive_duration),
        "close_timeout": ("5s", positive_duration),
        "refusal": ("status", enum_choice(RefusalMode)),
        "compression": {
            # On: browsers offer permessage-deflate on every connection, and an app reached directly
            # (or through NGINX) compresses; without it the gateway would multiply client-leg bytes.
            "enabled": (True, boolean),
            # zlib cannot compress with an 8-bit window (raw deflate): 9 is the smallest.
            "server_max_window_bits": (12, int_between(9, 15)),
            "client_max_window_bits": (12, int_between(8, 15)),
            "mem_level": (5, int_between(1, 9)),
            "min_size": (0, non_negative_size),
            "level": (6, int_between(1, 9)),
        },
    },
    "upstream": {
        "url": ("ws://127.0.0.1:8000", ws_urls),
        "connect_timeout": ("5s", positive_duration),
        "selection": ("round_robin", enum_choice(Selection)),
        "cooldown": ("5s", parse_duration),
        **_leg_schema("20s", "16MiB"),
    },
    "proxy": {
        "trusted_proxies": ([], cidrs),
        "idle_timeout": (None, optional_duration),
    },
    "reconnect": {
        "enabled": (True, boolean),
        "codes": ([1001, 1006, 1011, 1012, 1013, 1014], close_codes),
        "initial_backoff": ("100ms", positive_duration),
        "max_backoff": ("2s", positive_duration),
        "give_up_after": ("30s", positive_duration),
        "max_reconnects": (5, positive_int),
        "breaker_window": ("60s", positive_duration),
        "buffer_messages": (1000, positive_int),
        "buffer_bytes": ("1MiB", positive_size),
        "overflow": ("close", enum_choice(OverflowPolicy)),
        "delivery": ("at_most_once", enum_choice(DeliveryMode)),
        "confirm_interval": ("100ms", positive_duration),
        "app_queue_messages": (64, non_negative_int),
        "app_queue_bytes": ("64KiB", non_negative_size),
        "notify_loss": ("", template(("session_id",))),
        "notify_resume": ("", template(("session_id", "outage_ms", "replayed", "lost"))),
    },
    "resume": {
        "enabled": (True, boolean),
        "grace": ("30s", positive_duration),
        "buffer_bytes": ("1MiB", positive_size),
        "confirm_interval": ("1s", positive_duration),
    },
    "drain": {
        "listener_delay": ("5s", parse_duration),
        "spread": ("10s", parse_duration),
        "timeout": ("25s", positive_duration),
    },
}
"""Every key with its default (as written in config/gateway.yaml) and parser."""


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_SERVICE_LINKS: Final = re.compile(
    r"^GATEWAY_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$"
)
"""What Kubernetes injects into every pod of a namespace with a Service named ``gateway``."""


def _env_names(schema: Mapping[str, Any], prefix: str) -> dict[str, str]:
    """Every GATEWAY_* variable the configuration reads, with the key it sets."""
    names: dict[str, str] = {}
    for key, spec in schema.items():
        name = prefix + key.upper()
        if isinstance(spec, dict):
            names.update({n: f"{key}.{k}" for n, k in _env_names(spec, name + "_").items()})
        else:
            names[name] = key
    return names


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A warning for each GATEWAY_* variable that sets nothing, naming the closest known one.

    Kubernetes service-link variables (``GATEWAY_PORT``, ``GATEWAY_SERVICE_HOST``,
    ``GATEWAY_PORT_80_TCP_ADDR``...) are ignored: they must never stop the gateway from starting.
    """
    known = _env_names(SCHEMA, ENV_PREFIX)
    warnings = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known or _SERVICE_LINKS.match(name):
            continue
        # Compare what follows the prefix: the shared GATEWAY_ would make every name look close.
        suffixes = {known_name[len(ENV_PREFIX):]: known_name for known_name in known}
        close = difflib.get_close_matches(name[len(ENV_PREFIX):], list(suffixes), n=1, cutoff=0.75)
        hint = f"; did you mean {suffixes[close[0]]} ({known[suffixes[close[0]]]})?" if close else ""
        warnings.append(f"environment variable {name} is not a ws-gateway setting and is ignored{hint}")
    return warnings


def _env_overrides(environ: Mapping[str, str], schema: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, spec in schema.items():
        name = prefix + key.upper()
        if isinstance(spec, dict):
            nested = _env_overrides(environ, spec, name + "_")
            if nested:
                found[key] = nested
        elif name in environ:
            found[key] = yaml.safe_load(environ[name]) if environ[name] else None
    return found


def _build(
    schema: Mapping[str, Any], raw: Mapping[str, Any], path: str, problems: list[str]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in raw:
        if key not in schema:
            problems.append(f"{path}{key}: unknown key (allowed: {', '.join(schema)})")
    for key, spec in schema.items():
        if isinstance(spec, dict):
            section = raw.get(key, {})
            if section is None:
                section = {}
            if not isinstance(section, Mapping):
                problems.append(f"{path}{key}: expected a mapping of keys, got {section!r}")
                section = {}
            values[key] = _build(spec, section, f"{path}{key}.", problems)
            continue
        default, parser = spec
        value = raw.get(key, default)
        try:
            values[key] = parser(value)
        except ValueError as exc:
            problems.append(f"{path}{key}: {value!r} is invalid: {exc}")
            values[key] = parser(default)
    return values


def _check_consistency(values: dict[str, Any], problems: list[str]) -> None:
    client, upstream, drain = values["client"], values["upstream"], values["drain"]
    idle = values["proxy"]["idle_timeout"]
    for leg_name, leg in (("client", client), ("upstream", upstream)):
        if leg["ping_interval"] and leg["ping_jitter"] >= leg["ping_interval"]:
            problems.append(
                f"{leg_name}.ping_jitter: {format_duration(leg['ping_jitter'])} must be below "
                f"{leg_name}.ping_interval ({format_duration(leg['ping_interval'])})"
            )
    if idle is not None:
        if not client["ping_interval"]:
            problems.append(
                f"client.ping_interval: pings are off but proxy.idle_timeout is {format_duration(idle)}; "
                "idle clients would be dropped by the proxy"
            )
        elif client["ping_interval"] >= idle:
            problems.append(
                f"client.ping_interval: {format_duration(client['ping_interval'])} must be below "
                f"proxy.idle_timeout ({format_duration(idle)}) so the proxy never sees an idle connection"
            )
    reconnect = values["reconnect"]
    if reconnect["max_backoff"] < reconnect["initial_backoff"]:
        problems.append(
            f"reconnect.max_backoff: {format_duration(reconnect['max_backoff'])} must not be below "
            f"reconnect.initial_backoff ({format_duration(reconnect['initial_backoff'])})"
        )
    if drain["listener_delay"] + drain["spread"] >= drain["timeout"]:
        problems.append(
            f"drain.timeout: {format_duration(drain['timeout'])} must exceed drain.listener_delay + "
            f"drain.spread ({format_duration(drain['listener_delay'] + drain['spread'])}) to leave time for closes"
        )


def load_config(
    path: str | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Build the configuration from defaults, a YAML file, the environment and overrides.

    Args:
        path: YAML file, or None for defaults only.
        overrides: nested mapping from command-line flags (highest precedence).
        environ: the environment to read ``GATEWAY_*`` from (default ``os.environ``).

    Raises:
        ConfigError: listing every problem found.
    """
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                loaded = yaml.safe_load(handle)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read the file: {exc.strerror}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError([f"{path}: the top level must be a mapping of keys"])
        raw = dict(loaded)
    try:
        env = _env_overrides(os.environ if environ is None else environ, SCHEMA, ENV_PREFIX)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{ENV_PREFIX}* environment: a value is not valid YAML: {exc}"]) from None
    raw = _merge(_merge(raw, env), overrides or {})
    values = _build(SCHEMA, raw, "", problems)
    _check_consistency(values, problems)
    if problems:
        raise ConfigError(problems)
    return GatewayConfig(
        listen=values["listen"],
        admin_listen=values["admin_listen"],
        log_level=values["log_level"],
        max_sessions=values["max_sessions"],
        client=ClientConfig(**{**values["client"],
                                 "compression": CompressionConfig(**values["client"]["compression"])}),
        upstream=UpstreamConfig(**values["upstream"]),
        proxy=ProxyConfig(**values["proxy"]),
        drain=DrainConfig(**values["drain"]),
        reconnect=ReconnectConfig(**values["reconnect"]),
        resume=ResumeConfig(**values["resume"]),
    )


def _human(value: Any, key: str) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and key not in ("max_sessions",):
        return format_duration(value)
    if isinstance(value, int) and not isinstance(value, bool) and key.endswith(("_size", "_buffered", "_bytes")):
        return format_size(value)
    if isinstance(value, tuple):
        return value[0] if key == "url" and len(value) == 1 else list(value)
    if isinstance(value, frozenset):
        return sorted(value)
    return value


def effective_config(config: GatewayConfig) -> dict[str, Any]:
    """The configuration as a nested mapping in the file's units, for ``check-config``."""

    def render(obj: Any) -> dict[str, Any]:
        return {
            f.name: render(getattr(obj, f.name))
            if dataclasses.is_dataclass(getattr(obj, f.name))
            else _human(getattr(obj, f.name), f.name)
            for f in dataclasses.fields(obj)
        }

    return render(config)
