"""The one structured log line written for every closed session, and JSON log formatting.

Operators find a drop by its session line: both legs' close codes and
reasons, who started the close and why, duration and traffic each way. Lines
are JSON (orjson) so log pipelines index the fields without parsing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = ["JsonFormatter", "SessionRecord", "configure_logging", "log_session", "session_fields"]

session_logger = logging.getLogger("gateway.sessions")


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Fields of a session's closing log line."""

    session_id: str
    client_ip: str
    path: str
    client_code: int
    client_reason: str
    client_close: str
    """The client leg's closing handshake as a sentence ("sent 1011 (internal error) ...; no close frame received")."""
    upstream_code: int
    upstream_reason: str
    upstream_close: str
    initiator: str
    cause: str
    duration: float
    messages_in: int
    """Messages from the client to the upstream."""
    bytes_in: int
    messages_out: int
    """Messages from the upstream to the client."""
    bytes_out: int
    discarded: int = 0
    """Data messages that arrived after the session began to close and were not relayed."""
    reconnects: int = 0
    """Upstream losses this session survived."""
    outage_seconds: float = 0.0
    """Time spent waiting for the upstream to come back."""
    lost_messages: int = 0
    """Client messages lost at upstream outages (every reason of replay_dropped_messages_total)."""
    possible_duplicates: int = 0
    """at_least_once: unconfirmed client messages re-sent to a new upstream (each may be a duplicate)."""
    client_resumes: int = 0
    """Times a resumable client dropped and was spliced back in (docs/resume.md)."""
    compressed: bool = False
    """permessage-deflate was agreed with the client. ``bytes_in`` then counts the client's payload as
    it sent it (compressed where compressed), ``bytes_out`` the app's as the app sent it (plain)."""


_FIELDS: Final = tuple(field.name for field in dataclasses.fields(SessionRecord))


def session_fields(session_id: str) -> dict[str, Any]:
    """The ``extra`` of a log line about one session: its id as a field (``session_id``, as in the
    closing line), so log pipelines find every line of a session without parsing the text."""
    return {"fields": {"session_id": session_id}}


def log_session(record: SessionRecord) -> None:
    """Write the session's closing line (``event: session_closed``).

    The fields are read directly: ``dataclasses.asdict`` deep-copies every value, which cost
    more than the rest of the line on every session's end.
    """
    if not session_logger.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {name: getattr(record, name) for name in _FIELDS}
    fields["duration"] = round(record.duration, 3)
    fields["outage_seconds"] = round(record.outage_seconds, 3)
    session_logger.info("session closed", extra={"fields": {"event": "session_closed", **fields}})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode("utf-8")


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The admin port is aiohttp's, which reports malformed requests with tracebacks (at debug for
    # some); the traffic port's are gateway.http's one rate-limited line. Keep aiohttp's quiet.
    logging.getLogger("aiohttp.server").setLevel(max(logging.WARNING, root.level))
