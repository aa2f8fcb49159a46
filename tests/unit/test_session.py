"""The session and its legs on fake transports: every row of the README's close table, RFC 6455 closing,
keepalive, backpressure and outage entry, each in milliseconds and without a socket. Timers run on virtual
time (tests/virtual_time.py): a test that waits for one asserts the exact instant it fired."""

from __future__ import annotations

import asyncio
import gc
import os

import pytest

from gateway.core.backoff import Breaker
from gateway.core.closerules import Event
from gateway.core.codec import Opcode, build_close_payload, build_frame
from gateway.core.scanner import FrameScanner
from gateway.leg import Leg
from gateway.outage import RecoveryPlan
from gateway.session import Session, SessionState
from gateway.upstream import UpstreamConnection, UpstreamProtocol
from tests.fakes import FakeFlow, FakeTransport, Harness, attach, open_session
from tests.support import client_frame
from tests.unit.test_keepalive import slot_end
from tests.virtual_time import advance, idle, virtual_loop


def close_frame(code: int, reason: str = "", *, masked: bool = True) -> bytes:
    payload = b"" if code == 1005 else build_close_payload(code, reason)
    return client_frame(Opcode.CLOSE, payload) if masked else build_frame(Opcode.CLOSE, payload, masked=False)


def finish_legs(h: Harness) -> None:
    """Both TCP connections end (what the transports would report once closed)."""
    h.session.client.transport_lost()
    h.session.upstream.transport_lost()


# --- the close table ------------------------------------------------------------------------
async def test_app_close_is_relayed_with_code_and_reason_and_echoed() -> None:
    """App closes with 4003: the client gets 4003 and its reason, the app its echo; cause normal."""
    h = attach(open_session())
    h.from_upstream(close_frame(4003, "forbidden", masked=False))
    assert h.client.close_frames() == [(4003, "forbidden")]
    assert h.upstream.close_frames() == [(4003, "forbidden")]
    assert not h.client.closed, "the server closes TCP only after the client's reply"
    h.from_client(close_frame(4003, "forbidden"))
    assert h.client.closed and not h.upstream.closed, "client leg closed at once; the app closes its own end"
    finish_legs(h)
    assert h.closes("client", 4003, "upstream", "normal") == 1
    assert h.closes("upstream", 4003, "upstream", "normal") == 1


async def test_client_close_is_echoed_then_the_gateway_closes_tcp() -> None:
    """Client closes with 1000: echoed at once and TCP closed (the gateway is the server); the app gets 1000."""
    h = attach(open_session())
    h.from_client(close_frame(1000, "bye"))
    assert h.client.close_frames() == [(1000, "bye")]
    assert h.client.closed
    assert h.upstream.close_frames() == [(1000, "bye")]
    finish_legs(h)
    assert h.closes("client", 1000, "client", "normal") == 1
    assert h.closes("upstream", 1000, "client", "normal") == 1


async def test_empty_close_is_passed_on_empty() -> None:
    """A close frame with no code from the app reaches the client as a close frame with no code."""
    h = attach(open_session())
    h.from_upstream(close_frame(1005, masked=False))
    assert h.client.close_frames() == [(1005, "")]
    assert [p for _, op, p in h.client.frames() if op == Opcode.CLOSE] == [b""]


async def test_app_lost_without_reconnection_gives_the_client_1011() -> None:
    """App dies with no close frame, reconnection off: client 1011 with the reason; counted as abnormal."""
    h = attach(open_session())
    h.session.upstream.transport_lost()
    assert h.client.close_frames() == [(1011, "upstream closed the connection without a close frame")]
    h.session.client.transport_lost()
    assert h.closes("upstream", 1006, "upstream", "abnormal") == 1
    assert h.closes("client", 1011, "upstream", "abnormal") == 1


async def test_client_vanishing_gives_the_app_1001() -> None:
    """Client drops TCP: the app gets 1001 "client connection lost"; the client leg counts 1006."""
    h = attach(open_session())
    h.session.client.transport_lost()
    assert h.upstream.close_frames() == [(1001, "client connection lost")]
    h.session.upstream.transport_lost()
    assert h.closes("client", 1006, "client", "abnormal") == 1
    assert h.session.state is SessionState.CLOSED


async def test_client_message_over_the_limit_is_1009_and_the_app_gets_1001() -> None:
    """A client message over upstream.max_message_size: 1009 with the sizes to the client, 1001 to the app."""
    h = attach(open_session({"upstream": {"max_message_size": "1KiB"}}))
    h.from_client(client_frame(Opcode.BINARY, b"x" * 2000))
    [(code, reason)] = h.client.close_frames()
    assert code == 1009 and "2000" in reason and "1024" in reason
    assert h.upstream.close_frames() == [(1001, "client " + reason)]
    assert not [f for f in h.upstream.frames() if f[1] == Opcode.BINARY], "nothing of it was forwarded"


async def test_app_message_over_the_limit_is_1009_upstream_and_1001_to_the_client() -> None:
    """An app message over client.max_message_size: 1009 to the app, 1001 with the sizes to the client."""
    h = attach(open_session({"client": {"max_message_size": "1KiB"}}))
    h.from_upstream(h.app_frame(Opcode.TEXT, b"y" * 1500))
    assert h.upstream.close_frames()[0][0] == 1009
    assert h.client.close_frames()[0][0] == 1001 and h.client.close_frames()[0][1].startswith("upstream message")


async def test_malformed_client_frame_is_1002_and_tcp_closes_on_the_clients_reply() -> None:
    """RFC 6455 7.1.1: after its 1002 the gateway still reads the client, and closes TCP on the close reply."""
    h = attach(open_session())
    h.from_client(client_frame(Opcode.TEXT, b"bad", rsv=4))
    assert h.client.close_frames() == [(1002, "reserved bits set without an extension")]
    assert h.upstream.close_frames()[0][0] == 1001
    assert not h.client.closed
    h.from_client(client_frame(Opcode.TEXT, b"more data") + close_frame(1002))
    assert h.client.closed and not h.client.aborted
    assert not h.client.after_close


async def test_invalid_close_from_the_client_closes_tcp_at_once() -> None:
    """A close frame with a forbidden code: the gateway answers 1002 and closes TCP without waiting."""
    h = attach(open_session())
    h.from_client(client_frame(Opcode.CLOSE, (1005).to_bytes(2, "big")))
    assert h.client.close_frames() == [(1002, "invalid close code 1005")]
    assert h.client.closed


async def test_malformed_app_frame_gives_the_client_1014() -> None:
    """A masked frame from the app: 1002 to the app, 1014 (bad gateway) to the client."""
    h = attach(open_session())
    h.from_upstream(client_frame(Opcode.TEXT, b"masked"))
    assert h.upstream.close_frames() == [(1002, "masked frame from server")]
    assert h.client.close_frames() == [(1014, "upstream protocol error: masked frame from server")]


async def test_drain_closes_the_client_with_1012_and_the_app_with_1001() -> None:
    """Shutdown: 1012 "gateway shutting down" to the client, 1001 to the app."""
    h = attach(open_session())
    h.session.close_by_gateway(Event.SHUTDOWN)
    assert h.client.close_frames() == [(1012, "gateway shutting down")]
    assert h.upstream.close_frames() == [(1001, "gateway shutting down")]
    finish_legs(h)
    assert h.closes("client", 1012, "gateway", "shutdown") == 1


# --- RFC 6455 closing --------------------------------------------------------------------------
async def test_no_data_frame_after_the_gateways_close() -> None:
    """Once the client got its close, app data that was already on its way is not written to it (counted)."""
    h = attach(open_session())
    h.from_client(close_frame(1000))
    h.from_upstream(h.app_frame(Opcode.TEXT, b"late echo"))
    assert [op for _, op, _ in h.client.frames()] == [Opcode.CLOSE]
    assert (h.session.to_upstream.discarded_messages, h.session.to_client.discarded_messages) == (0, 1)


async def test_close_timeout_aborts_a_peer_that_never_answers() -> None:
    """A client that never answers the gateway's close is aborted exactly client.close_timeout (30 ms) later."""
    h = attach(open_session({"client": {"close_timeout": "30ms"}}))
    start = virtual_loop().time()
    h.session.close_by_gateway(Event.SHUTDOWN)
    assert not h.client.aborted
    await advance(1.0)
    assert h.client.aborted_at == start + h.config.client.close_timeout == 0.03


async def test_a_half_received_frame_does_not_hold_back_the_close() -> None:
    """The app dies inside a large frame: the client already has whole fragments and gets its close at once."""
    h = attach(open_session())
    frame = h.app_frame(Opcode.BINARY, os.urandom(100_000))
    h.from_upstream(frame[:30_000])
    h.session.upstream.transport_lost()
    frames = h.client.frames()  # parses: every write was whole frames
    assert frames[0][:2] == (False, Opcode.BINARY)
    assert frames[-1][1] == Opcode.CLOSE


# --- keepalive -----------------------------------------------------------------------------------
async def test_gateway_pings_and_answers_pings_on_both_legs() -> None:
    """Pings go out on both legs after the interval; a client's ping is answered at the gateway, not relayed."""
    start = virtual_loop().time()
    h = attach(open_session({"client": {"ping_interval": "20ms", "ping_jitter": "0s"},
                             "upstream": {"ping_interval": "20ms", "ping_jitter": "0s"}}))
    h.from_client(client_frame(Opcode.PING, b"are you there"))
    assert (True, Opcode.PONG, b"are you there") in h.client.frames()
    assert not h.upstream.frames()
    # Pings go out through the keepalive wheel: after the interval, at the end of its 50 ms slot.
    await advance(0.06)
    due = slot_end(start + 0.02)
    assert [at for at, _ in h.client.timed_frames(Opcode.PING)] == [due]
    assert [at for at, _ in h.upstream.timed_frames(Opcode.PING)] == [due]
    h.session.client.stop_keepalive()
    h.session.upstream.stop_keepalive()


async def test_client_missing_pongs_is_closed_with_1011() -> None:
    """No pong within ping_timeout: client 1011 "keepalive ping timeout", app 1001; ping_timeouts counted."""
    start = virtual_loop().time()
    h = attach(open_session({"client": {"ping_interval": "20ms", "ping_jitter": "0s", "ping_timeout": "20ms"}}))
    await advance(1.0)
    [(ping_at, _)] = h.client.timed_frames(Opcode.PING)
    [(close_at, _)] = h.client.timed_frames(Opcode.CLOSE)
    assert ping_at == slot_end(start + 0.02) and close_at == ping_at + h.config.client.ping_timeout
    assert h.client.close_frames() == [(1011, "keepalive ping timeout")]
    assert h.upstream.close_frames() == [(1001, "client keepalive ping timeout")]
    assert h.registry.get_sample_value("ws_gateway_ping_timeouts_total", {"leg": "client"}) == 1


async def test_app_missing_pongs_without_reconnection_is_1011_both_ways() -> None:
    """A frozen app with reconnection off: 1011 to the app and 1011 "upstream keepalive ping timeout" to the client."""
    start = virtual_loop().time()
    h = attach(open_session({"upstream": {"ping_interval": "20ms", "ping_jitter": "0s", "ping_timeout": "20ms"}}))
    await advance(1.0)
    [(ping_at, _)] = h.upstream.timed_frames(Opcode.PING)
    timeout_at = ping_at + h.config.upstream.ping_timeout
    assert ping_at == slot_end(start + 0.02)
    assert [at for at, _ in h.upstream.timed_frames(Opcode.CLOSE)] == [timeout_at]
    assert [at for at, _ in h.client.timed_frames(Opcode.CLOSE)] == [timeout_at]
    assert h.upstream.close_frames() == [(1011, "keepalive ping timeout")]
    assert h.client.close_frames() == [(1011, "upstream keepalive ping timeout")]


# --- backpressure -------------------------------------------------------------------------------------
async def test_full_client_buffer_pauses_the_app_and_drain_resumes_it() -> None:
    """A write that leaves the client over its mark pauses reading the app until the client drains."""
    h = attach(open_session({"client": {"slow_consumer_timeout": "5s"}}))
    h.client.buffered = 10_000_000
    h.client_flow.set_paused(True)
    h.from_upstream(h.app_frame(Opcode.BINARY, b"z" * 1000))
    assert not h.upstream.reading
    h.client.buffered = 0
    h.client_flow.set_paused(False)
    await idle()
    assert h.upstream.reading, "resumed at once, no time passing"


async def test_slow_consumer_gets_1008_even_with_the_app_paused_mid_frame() -> None:
    """The app is paused mid-frame and the client stops reading: 1008 exactly at slow_consumer_timeout (30 ms)."""
    h = attach(open_session({"client": {"slow_consumer_timeout": "30ms"}}))
    h.client.buffered = 10_000_000
    h.client_flow.set_paused(True)
    start = virtual_loop().time()
    frame = h.app_frame(Opcode.BINARY, os.urandom(200_000))
    h.from_upstream(frame[:50_000])
    assert not h.upstream.reading
    await advance(1.0)
    assert [at for at, _ in h.client.timed_frames(Opcode.CLOSE)] == [start + h.config.client.slow_consumer_timeout]
    assert h.client.close_frames() == [(1008, "slow consumer: client is not reading")]
    assert h.upstream.close_frames() == [(1001, "slow consumer: client is not reading")]
    assert h.upstream.reading, "the app is read again so its close reply is seen"
    h.from_upstream(frame[50_000:])
    assert [op for _, op, _ in h.client.frames()].count(Opcode.CLOSE) == 1
    assert h.closes("client", 1008, "gateway", "slow_consumer") == 0  # counted when both legs end
    finish_legs(h)
    assert h.closes("client", 1008, "gateway", "slow_consumer") == 1


# --- outage entry ------------------------------------------------------------------------------------
def with_recovery(h: Harness, reopen: object) -> Harness:
    """Attach with reconnection: ``reopen`` opens the new upstream, 10 ms between attempts."""
    config = h.config.reconnect
    return attach(h, RecoveryPlan(
        config=config,
        reopen=reopen,  # type: ignore[arg-type]
        subprotocol=None,
        delays=lambda: iter([0.0, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01]),
        breaker=Breaker(config.max_reconnects, config.breaker_window),
    ))


async def test_upstream_loss_holds_the_client_and_replays_in_order() -> None:
    """With reconnection, an app crash keeps the client open; its messages are held, then replayed in order."""
    h = open_session({"reconnect": {"enabled": True}})
    proceed = asyncio.Event()
    new = FakeTransport("new upstream")

    async def reopen(attempt: int) -> UpstreamConnection:
        await proceed.wait()
        protocol = UpstreamProtocol()
        protocol.connection_made(new)  # type: ignore[arg-type]
        return UpstreamConnection(new, protocol, None, b"")  # type: ignore[arg-type]

    with_recovery(h, reopen)
    h.session.upstream.transport_lost()
    assert h.session.state is SessionState.RECONNECTING
    assert not h.client.close_frames()
    one, two = client_frame(Opcode.TEXT, b"one"), client_frame(Opcode.TEXT, b"two")
    h.from_client(one + two)
    assert h.session.replay_state() == (2, len(one + two), True)
    proceed.set()
    await idle()
    assert h.session.state is SessionState.OPEN, "back as soon as the new upstream is (first delay 0)"
    assert bytes(new.written) == one + two
    h.from_client(client_frame(Opcode.TEXT, b"three"))
    assert [p for _, _, p in new.frames()] == [b"one", b"two", b"three"]


def relayed(h: Harness, name: str, direction: str) -> float:
    return h.registry.get_sample_value(f"ws_gateway_{name}_total", {"direction": direction}) or 0.0


async def test_counts_go_on_across_a_replaced_upstream() -> None:
    """A session's counts are its own, not a connection's: the app's messages before and after a reconnect
    are all counted, while the session lives and once it is over (each counted once)."""
    h = open_session({"reconnect": {"enabled": True}})
    new = FakeTransport("new upstream")

    async def reopen(attempt: int) -> UpstreamConnection:
        protocol = UpstreamProtocol()
        protocol.connection_made(new)  # type: ignore[arg-type]
        return UpstreamConnection(new, protocol, None, b"")  # type: ignore[arg-type]

    with_recovery(h, reopen)
    h.from_upstream(h.app_frame(Opcode.TEXT, b"one") + h.app_frame(Opcode.TEXT, b"two"))
    h.from_client(client_frame(Opcode.TEXT, b"hi"))
    h.session.upstream.transport_lost()
    await idle()
    assert h.session.state is SessionState.OPEN and h.session.upstream.transport is new
    h.from_upstream(h.app_frame(Opcode.TEXT, b"three"))
    expected = {("messages", "upstream_to_client"): 3, ("payload_bytes", "upstream_to_client"): 11,
                ("messages", "client_to_upstream"): 1, ("payload_bytes", "client_to_upstream"): 2}
    assert {key: relayed(h, *key) for key in expected} == expected, "while the session lives"
    h.from_client(close_frame(1000))
    finish_legs(h)
    assert h.session.state is SessionState.CLOSED
    assert {key: relayed(h, *key) for key in expected} == expected, "folded once the session is over"


async def test_outage_that_never_ends_gives_the_client_1013() -> None:
    """No upstream within give_up_after (50 ms): the client gets 1013 "upstream unavailable for ...s", then."""
    h = open_session({"reconnect": {"enabled": True, "give_up_after": "50ms"}})

    async def reopen(attempt: int) -> UpstreamConnection:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    with_recovery(h, reopen)
    lost_at = virtual_loop().time()
    h.session.upstream.transport_lost()
    await advance(1.0)
    assert [at for at, _ in h.client.timed_frames(Opcode.CLOSE)] == [lost_at + h.config.reconnect.give_up_after]
    [(code, reason)] = h.client.close_frames()
    assert code == 1013 and reason.startswith("upstream unavailable for")
    h.session.client.transport_lost()
    assert h.closes("client", 1013, "gateway", "upstream_unavailable") == 1


async def test_upstream_lost_mid_message_to_the_client_is_1011() -> None:
    """An outage inside a message to the client cannot be spliced: 1011, counted as abnormal."""
    h = open_session({"reconnect": {"enabled": True}})

    async def reopen(attempt: int) -> UpstreamConnection:
        raise AssertionError("must not reconnect")

    with_recovery(h, reopen)
    h.from_upstream(h.app_frame(Opcode.TEXT, b"first half", fin=False))
    h.session.upstream.transport_lost()
    assert h.client.close_frames() == [(1011, "upstream lost in the middle of a message to the client")]


@pytest.mark.parametrize("code", [1012, 1001])
async def test_retryable_close_from_the_app_is_echoed_and_not_relayed(code: int) -> None:
    """The app closes with a retryable code: echoed to the app, the client hears nothing and stays."""
    h = open_session({"reconnect": {"enabled": True}})

    async def reopen(attempt: int) -> UpstreamConnection:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    with_recovery(h, reopen)
    h.from_upstream(close_frame(code, "restart", masked=False))
    assert h.upstream.close_frames() == [(code, "restart")]
    assert not h.client.close_frames()
    assert h.session.state is SessionState.RECONNECTING
    h.session.close_by_gateway(Event.SHUTDOWN)
    assert h.client.close_frames() == [(1012, "gateway shutting down")]


def instant_reopen() -> object:
    """A reopen that connects a new fake upstream at once."""

    async def reopen(attempt: int) -> UpstreamConnection:
        transport = FakeTransport("new upstream")
        protocol = UpstreamProtocol()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return UpstreamConnection(transport, protocol, None, b"")  # type: ignore[arg-type]

    return reopen


async def test_replay_buffer_overflow_under_close_policy_is_1013() -> None:
    """More client messages than reconnect.buffer_messages during an outage: the client gets 1013, counted."""
    h = open_session({"reconnect": {"enabled": True, "buffer_messages": 2, "overflow": "close"}})

    async def reopen(attempt: int) -> UpstreamConnection:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    with_recovery(h, reopen)
    h.session.upstream.transport_lost()
    h.from_client(b"".join(client_frame(Opcode.TEXT, str(i).encode()) for i in range(3)))
    [(code, reason)] = h.client.close_frames()
    assert code == 1013 and reason.startswith("replay buffer full")
    h.session.client.transport_lost()
    assert h.registry.get_sample_value("ws_gateway_replay_overflows_total", {"policy": "close"}) == 1


async def test_breaker_trips_when_the_upstream_is_lost_too_often() -> None:
    """With max_reconnects 1, the second loss in the window closes the client with 1011 "circuit breaker"."""
    h = open_session({"reconnect": {"enabled": True, "max_reconnects": 1}})
    with_recovery(h, instant_reopen())
    h.session.upstream.transport_lost()
    await idle()
    assert h.session.state is SessionState.OPEN, "the first loss was survived"
    h.session.upstream.transport_lost()
    [(code, reason)] = h.client.close_frames()
    assert code == 1011 and reason.startswith("circuit breaker: upstream lost 2 times")
    h.session.client.transport_lost()
    assert h.closes("client", 1011, "gateway", "internal") == 1


async def test_retention_resumes_after_a_message_too_large_to_keep() -> None:
    """A message over buffer_bytes is not kept; the next message cut by an outage is still replayed whole."""
    h = open_session({"reconnect": {"enabled": True, "buffer_bytes": "2KiB"}})
    with_recovery(h, instant_reopen())
    h.from_client(client_frame(Opcode.BINARY, b"x" * 3000, fin=False))  # outgrows the retention
    h.from_client(client_frame(Opcode.CONTINUATION, b"y"))
    first = client_frame(Opcode.TEXT, b"before | ", fin=False)
    h.from_client(first)
    h.session.upstream.transport_lost()
    rest = client_frame(Opcode.CONTINUATION, b"after")
    h.from_client(rest)
    await idle()
    assert h.session.state is SessionState.OPEN
    new = h.session.upstream.transport
    assert bytes(new.written) == first + rest  # type: ignore[attr-defined]


# --- memory -------------------------------------------------------------------------------------
def live_objects(*kinds: type) -> list[int]:
    """How many objects of each kind the cyclic collector tracks now (freed objects are not listed)."""
    counts = dict.fromkeys(kinds, 0)
    # A plain loop: a comprehension's closure cell would be in the list it refers to (a cycle that,
    # with the collector off, would keep every object alive).
    for o in gc.get_objects():
        if type(o) in counts:
            counts[type(o)] += 1
    return list(counts.values())


async def relay_lose_resume_and_close(kinds: tuple[type, ...], before: list[int]) -> None:
    """One session's life: relay, upstream loss, resume on a new upstream, close (all locals die on return)."""
    h = open_session({"reconnect": {"enabled": True}})
    new = FakeTransport("new upstream")
    protocols: list[UpstreamProtocol] = []

    async def reopen(attempt: int) -> UpstreamConnection:
        protocols.append(UpstreamProtocol())
        protocols[0].connection_made(new)  # type: ignore[arg-type]
        return UpstreamConnection(new, protocols[0], None, b"")  # type: ignore[arg-type]

    with_recovery(h, reopen)
    h.from_client(client_frame(Opcode.TEXT, b"one"))
    h.session.upstream.transport_lost()
    await idle()
    assert h.session.state is SessionState.OPEN and h.session.outage is not None
    assert h.session.outage.stats.reconnects == 1
    expected = [b + n for b, n in zip(before, (1, 2, 2, 1), strict=True)]
    assert live_objects(*kinds) == expected, "the replaced upstream leg is freed at once"
    h.from_client(close_frame(1000))
    h.session.client.transport_lost()
    protocols[0].connection_lost(None)  # the new upstream's TCP ends as uvloop would report it
    assert h.session.state is SessionState.CLOSED


async def test_a_finished_session_is_freed_by_reference_counting_alone() -> None:
    """Sessions break their own reference cycles when they end (gateway.gcpolicy relies on it): with the
    collector off, a session that relayed, lost its upstream, resumed on a new one and closed leaves
    no session, leg, scanner or protocol behind; the replaced upstream leg goes as soon as it is replaced."""
    kinds = (Session, Leg, FrameScanner, UpstreamProtocol)
    gc.collect()
    gc.disable()
    try:
        before = live_objects(*kinds)
        await relay_lose_resume_and_close(kinds, before)
        assert live_objects(*kinds) == before
    finally:
        gc.enable()


async def compressed_resumable_session_life(registry: dict[bytes, object]) -> None:
    """A compressed, resumable session relays both ways, its client drops and comes back, then it closes."""
    from gateway.core.compression import negotiate
    from gateway.resume import ResumeState
    from tests.unit.core.test_inflate import client_compressed

    h = open_session()
    agreement = negotiate("permessage-deflate", h.config.client.compression)
    assert agreement is not None
    h.session.resume = ResumeState(h.config.resume, registry, h.session, "ws-gateway.resumable")
    h.session.resume.issue_token()
    h.session.attach(h.client, h.client_flow, h.upstream, h.upstream_flow,  # type: ignore[arg-type]
                     compression=agreement)
    h.from_client(client_compressed([b"hello " * 20]))
    h.from_upstream(h.app_frame(Opcode.TEXT, b"from the app " * 20))
    h.session.client.transport_lost()  # a drop with no close frame: the session waits
    assert h.session.state is SessionState.CLIENT_AWAY
    back = FakeTransport("client again")
    assert h.session.splice_client(back, FakeFlow(), agreement, 0)  # type: ignore[arg-type]
    h.session.client.scanner.feed(close_frame(1000))
    h.session.client.transport_lost()
    h.session.upstream.scanner.feed(h.app_frame(Opcode.CLOSE, build_close_payload(1000, "")))
    h.session.upstream.transport_lost()
    assert h.session.state is SessionState.CLOSED


async def test_a_finished_compressed_resumable_session_is_freed_by_reference_counting_alone() -> None:
    """The inflater, the deflater and the resume state (tap, token registry) hold nothing back either: with the
    collector off, nothing of the session, its three client legs' worth of objects or its registry entry stays."""
    from gateway.core.inflate import Inflater
    from gateway.resume import ResumeState

    kinds = (Session, Leg, FrameScanner, Inflater, ResumeState)
    registry: dict[bytes, object] = {}
    gc.collect()
    gc.disable()
    try:
        before = live_objects(*kinds)
        await compressed_resumable_session_life(registry)
        assert live_objects(*kinds) == before
        assert registry == {}
    finally:
        gc.enable()
