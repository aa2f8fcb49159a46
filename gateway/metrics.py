"""Every Prometheus metric of the gateway, built on a registry the caller passes.

Methods are named for events (``session_closed``, ``ping_timed_out``).
Counters on the per-message path are never touched per message: each live
session keeps plain integers (see :class:`TrafficCounters`) that a collector
reads at scrape time, and a session's totals are folded into this object when
it ends. Every label is bounded; series known in advance exist at 0 from
start-up.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.core.closecodes import Cause, Initiator, code_label
from gateway.core.closerules import LegName, known_series
from gateway.core.counts import DirectionCounts
from gateway.core.labels import (
    COMPRESSION_RESULTS,
    CONNECT_RESULTS,
    DIRECTIONS,
    HANDSHAKE_STATUSES,
    RECONNECT_RESULTS,
    REPLAY_DROP_REASONS,
    RESUME_RESULTS,
)
from gateway.core.replay import OverflowPolicy

__all__ = [
    "COMPRESSION_RESULTS",
    "CONNECT_RESULTS",
    "DIRECTIONS",
    "HANDSHAKE_STATUSES",
    "LEGS",
    "GatewayMetrics",
    "TrafficCounters",
]

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the exposition and no dashboard reads them

PREFIX: Final = "ws_gateway"
LEGS: Final = tuple(leg.value for leg in LegName)
OUTAGE_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Buckets, in seconds, of the outage-duration histogram (an upstream loss until relaying resumes)."""
RTT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

class TrafficCounters(Protocol):
    """What a live session exposes to the scrape-time collector."""

    @property
    def to_upstream(self) -> DirectionCounts:
        """What the client sent (direction ``client_to_upstream``)."""
        ...

    @property
    def to_client(self) -> DirectionCounts:
        """What the app sent (direction ``upstream_to_client``)."""
        ...

    def replay_state(self) -> tuple[int, int, bool]:
        """(messages buffered, bytes buffered, reconnecting now)."""
        ...


class _TrafficCollector(Collector):
    """Sums live sessions' integers plus folded totals at scrape time."""

    def __init__(self, owner: GatewayMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        owner = self._owner
        to_upstream, to_client = DirectionCounts(), DirectionCounts()
        owner.folded_to_upstream.add_to(to_upstream)
        owner.folded_to_client.add_to(to_client)
        for session in owner.live_sessions:
            session.to_upstream.add_to(to_upstream)
            session.to_client.add_to(to_client)
        families = (
            ("messages", "Data messages relayed, by direction."),
            ("payload_bytes", "Data-frame payload bytes relayed, by direction."),
            ("fragmented_messages", "Messages the gateway re-sent as RFC 6455 fragments, by direction."),
            ("discarded_messages",
             "Data messages not relayed because they arrived after the session began to close, by direction."),
        )
        for name, documentation in families:
            family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=["direction"])
            family.add_metric([DIRECTIONS[0]], getattr(to_upstream, name))
            family.add_metric([DIRECTIONS[1]], getattr(to_client, name))
            yield family
        yield from _compression_families(to_upstream, to_client)
        gauge = GaugeMetricFamily(f"{PREFIX}_sessions_open", "Client sessions open now.")
        gauge.add_metric([], len(self._owner.live_sessions))
        yield gauge
        messages = buffered = reconnecting = 0
        for session in self._owner.live_sessions:
            held, held_bytes, waiting = session.replay_state()
            messages += held
            buffered += held_bytes
            reconnecting += waiting
        for name, documentation, value in (
            ("sessions_reconnecting", "Sessions whose upstream leg is being reconnected now.", reconnecting),
            ("replay_buffered_messages", "Client messages held for replay during upstream outages.", messages),
            ("replay_buffered_bytes", "Bytes of client messages held for replay during upstream outages.", buffered),
        ):
            replay_gauge = GaugeMetricFamily(f"{PREFIX}_{name}", documentation)
            replay_gauge.add_metric([], value)
            yield replay_gauge


def _compression_families(to_upstream: DirectionCounts, to_client: DirectionCounts) -> Iterator[Metric]:
    """permessage-deflate on the client leg: compressed messages, and their payload bytes on the
    client's wire and as the app sends or receives them (the ratio is what compression saves)."""
    messages = CounterMetricFamily(f"{PREFIX}_compressed_messages",
                                   "Messages that crossed the client leg compressed (permessage-deflate), "
                                   "by direction.",
                                   labels=["direction"])
    payload = CounterMetricFamily(f"{PREFIX}_compressed_payload_bytes",
                                  "Payload bytes of compressed messages, by direction and form: wire (compressed, "
                                  "on the client leg) or plain (as the app sends or receives them).",
                                  labels=["direction", "form"])
    for direction, counts in ((DIRECTIONS[0], to_upstream), (DIRECTIONS[1], to_client)):
        messages.add_metric([direction], counts.compressed_messages)
        payload.add_metric([direction, "wire"], counts.compressed_bytes)
        payload.add_metric([direction, "plain"], counts.plain_bytes)
    yield messages
    yield payload


class GatewayMetrics:
    """The gateway's metrics on one registry; tests pass a fresh registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.live_sessions: set[TrafficCounters] = set()
        self.folded_to_upstream = DirectionCounts()
        """Counts of finished sessions (the collector adds the live ones')."""
        self.folded_to_client = DirectionCounts()
        self._sessions = Counter(f"{PREFIX}_sessions", "Client sessions accepted (upgraded).", registry=registry)
        self._closes = Counter(
            f"{PREFIX}_closes",
            "Closes by leg, close code, who started the close and why.",
            ["leg", "code", "initiator", "cause"],
            registry=registry,
        )
        self._ping_rtt = Histogram(
            f"{PREFIX}_ping_rtt_seconds",
            "Round-trip time of gateway pings, by leg.",
            ["leg"],
            buckets=RTT_BUCKETS,
            registry=registry,
        )
        self._ping_timeouts = Counter(
            f"{PREFIX}_ping_timeouts", "Pings left unanswered past the timeout, by leg.", ["leg"], registry=registry
        )
        self._oversize = Counter(
            f"{PREFIX}_oversize_refusals",
            "Messages refused for exceeding max_message_size, by the leg they arrived on.",
            ["leg"],
            registry=registry,
        )
        self._protocol_errors = Counter(
            f"{PREFIX}_protocol_errors",
            "Malformed frames received, by the leg they arrived on.",
            ["leg"],
            registry=registry,
        )
        self._handshake_failures = Counter(
            f"{PREFIX}_handshake_failures",
            "Client upgrade requests answered with an HTTP error, by status.",
            ["status"],
            registry=registry,
        )
        self._compression = Counter(
            f"{PREFIX}_compression_negotiations",
            "permessage-deflate at client handshakes, by result: negotiated, not_offered, declined.",
            ["result"],
            registry=registry,
        )
        self._compression_children = {result: self._compression.labels(result) for result in COMPRESSION_RESULTS}
        self._connects = Counter(
            f"{PREFIX}_upstream_connects",
            "Upstream connection attempts, by result.",
            ["result"],
            registry=registry,
        )
        self._reconnects = Counter(
            f"{PREFIX}_upstream_reconnects",
            "Attempts to reconnect a session's upstream leg, by result.",
            ["result"],
            registry=registry,
        )
        self._outages = Histogram(
            f"{PREFIX}_upstream_outage_seconds",
            "How long sessions waited for their upstream to come back (resumed outages).",
            buckets=OUTAGE_BUCKETS,
            registry=registry,
        )
        self._resumed = Counter(
            f"{PREFIX}_sessions_resumed",
            "Upstream losses a session survived: reconnected and replayed without closing the client.",
            registry=registry,
        )
        self._replayed = Counter(
            f"{PREFIX}_replayed_messages", "Client messages replayed to a reconnected upstream.", registry=registry
        )
        self._client_resumes = Counter(
            f"{PREFIX}_client_resumes",
            "Resumable clients that dropped, by what followed: resumed (spliced back in), expired (not back "
            "within resume.grace), overflow (the replay log overflowed while it was away); and resume "
            "attempts refused with 4410 (refused).",
            ["result"],
            registry=registry,
        )
        for result in RESUME_RESULTS:
            self._client_resumes.labels(result)
        self._client_gap = Histogram(
            f"{PREFIX}_client_gap_seconds",
            "How long resumed clients were away (from the drop the gateway saw to the resume).",
            buckets=OUTAGE_BUCKETS,
            registry=registry,
        )
        self._client_replayed = Counter(
            f"{PREFIX}_client_resume_replayed_messages",
            "The app's messages re-sent to resumed clients (sent before or during the gap, not confirmed).",
            registry=registry,
        )
        self._replay_dropped = Counter(
            f"{PREFIX}_replay_dropped_messages",
            "Client messages lost at upstream outages, by reason: unhandled (confirmed read by the app "
            "server, perhaps still queued for its handler, not re-sent: reconnect.app_queue_messages), "
            "unconfirmed (at_most_once: sent, not confirmed, not re-sent), cut (the outage began inside a "
            "message too large to keep), overflow (replay or retention limit), too_large (larger than the "
            "replay buffer), refused (a message the upstream refused or failed on; the client was closed "
            "naming it).",
            ["reason"],
            registry=registry,
        )
        for reason in REPLAY_DROP_REASONS:
            self._replay_dropped.labels(reason)
        self._replay_overflows = Counter(
            f"{PREFIX}_replay_overflows", "Replay buffers that overflowed, by policy.", ["policy"], registry=registry
        )
        self._breaker_trips = Counter(
            f"{PREFIX}_reconnect_breaker_trips",
            "Sessions closed because their upstream was lost too often (circuit breaker).",
            registry=registry,
        )
        self._draining = Gauge(f"{PREFIX}_draining", "1 while the gateway drains after SIGTERM.", registry=registry)
        self._ready = Gauge(f"{PREFIX}_ready", "1 while /readyz answers 200.", registry=registry)
        Info(f"{PREFIX}_build", "Version of the gateway.", registry=registry).info(
            {"version": __version__, "python": platform.python_version()}
        )
        registry.register(_TrafficCollector(self))
        for leg in LEGS:
            self._ping_rtt.labels(leg)
            self._ping_timeouts.labels(leg)
            self._oversize.labels(leg)
            self._protocol_errors.labels(leg)
        for leg, code, initiator, cause in known_series():
            self._closes.labels(leg, code_label(code), initiator.value, cause.value)
        for status in HANDSHAKE_STATUSES:
            self._handshake_failures.labels(status)
        self._connect_children = {result: self._connects.labels(result) for result in CONNECT_RESULTS}
        self._close_children: dict[tuple[str, int, Initiator, Cause], Counter] = {}
        for result in RECONNECT_RESULTS:
            self._reconnects.labels(result)
        for policy in OverflowPolicy:
            self._replay_overflows.labels(policy.value)

    def session_opened(self, session: TrafficCounters) -> None:
        """A client upgrade completed; the session's counters become visible."""
        self._sessions.inc()
        self.live_sessions.add(session)

    def session_closed(
        self, session: TrafficCounters, legs: Iterable[tuple[str, int, Initiator, Cause]]
    ) -> None:
        """Fold a finished session's traffic and count one close per leg.

        Args:
            session: the finished session.
            legs: ``(leg, code, initiator, cause)`` for each leg that was open.
        """
        self.live_sessions.discard(session)
        session.to_upstream.add_to(self.folded_to_upstream)
        session.to_client.add_to(self.folded_to_client)
        children = self._close_children
        for leg, code, initiator, cause in legs:
            key = (leg, code, initiator, cause)
            child = children.get(key)
            if child is None:  # bound once per series: labels() costs a few µs per call
                child = children[key] = self._closes.labels(leg, code_label(code), initiator.value, cause.value)
            child.inc()

    def ping_answered(self, leg: str, seconds: float) -> None:
        """A gateway ping got its pong after ``seconds``."""
        self._ping_rtt.labels(leg).observe(seconds)

    def ping_timed_out(self, leg: str) -> None:
        """A gateway ping went unanswered; the leg is being closed."""
        self._ping_timeouts.labels(leg).inc()

    def message_refused(self, leg: str) -> None:
        """A message over max_message_size arrived on ``leg``."""
        self._oversize.labels(leg).inc()

    def protocol_error(self, leg: str) -> None:
        """A malformed frame arrived on ``leg``."""
        self._protocol_errors.labels(leg).inc()

    def handshake_failed(self, status: int) -> None:
        """A client's upgrade was answered with HTTP ``status``."""
        label = str(status)
        self._handshake_failures.labels(label if label in HANDSHAKE_STATUSES else "other").inc()

    def compression_negotiated(self, result: str) -> None:
        """A client handshake's permessage-deflate outcome (one of COMPRESSION_RESULTS)."""
        self._compression_children[result].inc()

    def upstream_connect(self, result: str) -> None:
        """An upstream connection attempt ended with ``result`` (one of CONNECT_RESULTS)."""
        self._connect_children[result].inc()

    def reconnect_attempt(self, result: str) -> None:
        """A reconnect attempt ended with ``result`` (one of RECONNECT_RESULTS)."""
        self._reconnects.labels(result).inc()

    def session_resumed(self, outage_seconds: float, replayed: int) -> None:
        """A session got a new upstream after ``outage_seconds`` and replayed ``replayed`` messages."""
        self._resumed.inc()
        self._outages.observe(outage_seconds)
        self._replayed.inc(replayed)

    def client_resume(self, result: str) -> None:
        """A resumable client's drop or resume attempt ended with ``result`` (one of RESUME_RESULTS)."""
        self._client_resumes.labels(result).inc()

    def client_resumed(self, gap_seconds: float, replayed: int) -> None:
        """A client resumed after ``gap_seconds``; ``replayed`` of the app's messages were re-sent."""
        self._client_resumes.labels("resumed").inc()
        self._client_gap.observe(gap_seconds)
        self._client_replayed.inc(replayed)

    def replay_lost(self, dropped: Mapping[str, int], overflowed: bool, policy: str) -> None:
        """Messages were lost at an outage, counted by reason; ``overflowed`` when the replay buffer's
        limits were hit."""
        for reason, count in dropped.items():
            if count:
                self._replay_dropped.labels(reason).inc(count)
        if overflowed:
            self._replay_overflows.labels(policy).inc()

    def breaker_tripped(self) -> None:
        """A session lost its upstream too often and is being closed."""
        self._breaker_trips.inc()

    def set_draining(self, draining: bool) -> None:
        """The drain state changed."""
        self._draining.set(1 if draining else 0)

    def set_ready(self, ready: bool) -> None:
        """The readiness answer changed."""
        self._ready.set(1 if ready else 0)
