"""Delivery guarantees on fake transports: confirmation pings, and what an outage does with the
messages the lost upstream had not confirmed, in both reconnect.delivery modes. On virtual time
(tests/virtual_time.py): a reconnection to an instant fake upstream completes without the clock moving."""

from __future__ import annotations

from typing import Any

from gateway.core.codec import Opcode, build_frame
from gateway.session import SessionState
from gateway.upstream import UpstreamConnection, UpstreamProtocol
from tests.fakes import FakeTransport, Harness, open_session
from tests.support import client_frame
from tests.unit.test_session import with_recovery
from tests.virtual_time import advance, idle, virtual_loop

CONFIRM_INTERVAL = 0.02
"""reconnect.confirm_interval in these tests (20 ms)."""


def delivery_session(mode: str, **reconnect: Any) -> tuple[Harness, list[FakeTransport]]:
    """A session with reconnection in ``mode``; each reconnect gets a new fake upstream (listed)."""
    h = open_session({"reconnect": {"enabled": True, "delivery": mode, "confirm_interval": "20ms", **reconnect}})
    assert h.config.reconnect.confirm_interval == CONFIRM_INTERVAL
    upstreams: list[FakeTransport] = []

    async def reopen(attempt: int) -> UpstreamConnection:
        transport = FakeTransport(f"upstream {len(upstreams) + 2}")
        upstreams.append(transport)
        protocol = UpstreamProtocol()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return UpstreamConnection(transport, protocol, None, b"")  # type: ignore[arg-type]

    with_recovery(h, reopen)
    return h, upstreams


def texts(transport: FakeTransport) -> list[bytes]:
    return [payload for _, op, payload in transport.frames() if op == Opcode.TEXT]


def pings(transport: FakeTransport) -> list[bytes]:
    return [payload for _, op, payload in transport.frames() if op == Opcode.PING]


def send(h: Harness, *messages: bytes) -> None:
    for message in messages:
        h.from_client(client_frame(Opcode.TEXT, message))


async def confirm(h: Harness, upstream: FakeTransport, feed: Any = None) -> None:
    """Let confirm_interval pass, which sends one confirmation ping on ``upstream`` (the messages waiting for
    one armed its timer), and answer it as the app's WebSocket layer would."""
    before = len(pings(upstream))
    await advance(CONFIRM_INTERVAL)
    assert len(pings(upstream)) == before + 1, "one confirmation ping within confirm_interval"
    payload = pings(upstream)[-1]
    (feed or h.session.upstream.scanner.feed)(build_frame(Opcode.PONG, payload, masked=False))


def lost(h: Harness, reason: str) -> float:
    return h.registry.get_sample_value("ws_gateway_replay_dropped_messages_total", {"reason": reason}) or 0.0


async def test_a_confirmation_ping_follows_client_messages_and_an_idle_session_sends_none() -> None:
    """After client messages, one 9-byte ping goes upstream behind them; its pong confirms them all."""
    h, _ = delivery_session("at_most_once")
    sent_at = virtual_loop().time()
    send(h, b"one", b"two", b"three")
    await confirm(h, h.upstream)
    frames = h.upstream.frames()
    assert [op for _, op, _ in frames] == [Opcode.TEXT] * 3 + [Opcode.PING]
    assert len(frames[-1][2]) == 9, "not a keepalive payload (8 bytes)"
    assert [at for at, _ in h.upstream.timed_frames(Opcode.PING)] == [sent_at + CONFIRM_INTERVAL]
    confirmations = h.session.outage.confirmations  # type: ignore[union-attr]
    assert confirmations is not None and confirmations.ledger.confirmed == 3
    await advance(1.0)
    assert len(pings(h.upstream)) == 1, "nothing new to confirm: no more pings"
    send(h, b"four")
    await confirm(h, h.upstream)
    assert len(pings(h.upstream)) == 2 and confirmations.ledger.confirmed == 4


async def test_at_most_once_counts_the_unconfirmed_messages_and_does_not_resend_them() -> None:
    """Pong-only (app_queue_messages 0): two confirmed, three unconfirmed at the loss: the three are counted
    (reason unconfirmed) and the new upstream gets only what the client sent during the outage."""
    h, upstreams = delivery_session("at_most_once", app_queue_messages=0)
    send(h, b"m1", b"m2")
    await confirm(h, h.upstream)
    send(h, b"m3", b"m4", b"m5")
    h.session.upstream.transport_lost()
    assert h.session.state is SessionState.RECONNECTING
    assert (lost(h, "unconfirmed"), lost(h, "unhandled")) == (3, 0)
    send(h, b"during")
    await idle()
    assert h.session.state is SessionState.OPEN
    assert texts(upstreams[0]) == [b"during"]
    assert h.session.outage is not None and h.session.outage.stats.lost_messages == 3
    assert h.session.outage.announced == 0


async def test_at_most_once_counts_the_last_confirmed_messages_as_possibly_unhandled() -> None:
    """app_queue_messages 3: of m1-m4, confirmed, the last three may still sit in the app server's queue:
    counted as unhandled next to the unconfirmed m5-m6, so the count covers what a SIGKILL loses."""
    h, upstreams = delivery_session("at_most_once", app_queue_messages=3)
    send(h, b"m1", b"m2", b"m3", b"m4")
    await confirm(h, h.upstream)
    send(h, b"m5", b"m6")
    h.session.upstream.transport_lost()
    assert (lost(h, "unhandled"), lost(h, "unconfirmed")) == (3, 2)
    await idle()
    assert h.session.state is SessionState.OPEN and texts(upstreams[0]) == []
    assert h.session.outage is not None and h.session.outage.stats.lost_messages == 5


async def test_at_least_once_resends_the_unconfirmed_messages_first_in_order() -> None:
    """Same outage in at_least_once, pong-only: m3-m5 go to the new upstream before what was held, nothing
    is counted lost, and the session knows three may be duplicates."""
    h, upstreams = delivery_session("at_least_once", app_queue_messages=0)
    send(h, b"m1", b"m2")
    await confirm(h, h.upstream)
    send(h, b"m3", b"m4", b"m5")
    h.session.upstream.transport_lost()
    send(h, b"during")
    await idle()
    assert h.session.state is SessionState.OPEN
    assert texts(upstreams[0]) == [b"m3", b"m4", b"m5", b"during"]
    assert sum(lost(h, r) for r in ("unhandled", "unconfirmed", "cut", "overflow", "too_large")) == 0
    assert h.session.outage is not None and h.session.outage.announced == 3


async def test_at_least_once_resends_the_window_of_confirmed_messages_before_the_unconfirmed() -> None:
    """app_queue_messages 1 (default window bytes): the last confirmed message, m2, goes again before
    m3-m5: four possible duplicates, nothing lost."""
    h, upstreams = delivery_session("at_least_once", app_queue_messages=1)
    send(h, b"m1", b"m2")
    await confirm(h, h.upstream)
    send(h, b"m3", b"m4", b"m5")
    h.session.upstream.transport_lost()
    send(h, b"during")
    await idle()
    assert texts(upstreams[0]) == [b"m2", b"m3", b"m4", b"m5", b"during"]
    assert sum(lost(h, r) for r in ("unhandled", "unconfirmed", "cut", "overflow", "too_large")) == 0
    assert h.session.outage is not None and h.session.outage.announced == 4


async def test_at_least_once_counts_window_messages_past_app_queue_bytes_as_unhandled() -> None:
    """Window of 3 messages but app_queue_bytes 100: of three confirmed 60-byte messages only the last is
    kept; the other two are counted as unhandled (never a silent loss), the kept one is re-sent."""
    h, upstreams = delivery_session("at_least_once", app_queue_messages=3, app_queue_bytes="100B")
    send(h, b"a" * 60, b"b" * 60, b"c" * 60)
    await confirm(h, h.upstream)
    h.session.upstream.transport_lost()
    await idle()
    assert texts(upstreams[0]) == [b"c" * 60]
    assert lost(h, "unhandled") == 2


async def test_at_least_once_resends_again_after_a_confirmed_replay() -> None:
    """Pong-only: what a new upstream confirmed is not sent again at its loss; what came after it is."""
    h, upstreams = delivery_session("at_least_once", app_queue_messages=0)
    send(h, b"a", b"b")
    h.session.upstream.transport_lost()
    await idle()
    assert texts(upstreams[0]) == [b"a", b"b"]
    await confirm(h, upstreams[0])
    send(h, b"c")
    h.session.upstream.transport_lost()
    await idle()
    assert texts(upstreams[1]) == [b"c"]
    assert h.session.state is SessionState.OPEN


async def test_a_message_that_kills_the_upstream_again_on_replay_ends_the_session_naming_it() -> None:
    """Poison: message #2 is the first unconfirmed at two losses in a row (re-sent after the window's #1, and
    the new upstream died on it too): the client gets 1011 naming it, counted as refused; no third upstream
    is tried."""
    h, upstreams = delivery_session("at_least_once")
    send(h, b"fine")
    await confirm(h, h.upstream)
    send(h, b"poison")
    h.session.upstream.transport_lost()
    await idle()
    assert texts(upstreams[0]) == [b"fine", b"poison"]
    h.session.upstream.transport_lost()
    await advance(1.0)
    assert h.client.close_frames() == [(1011, "message #2 made the upstream fail twice")]
    assert len(upstreams) == 1
    assert lost(h, "refused") == 1
    h.session.client.transport_lost()
    assert h.closes("client", 1011, "gateway", "internal") == 1


async def test_invalid_utf8_that_kills_the_upstream_twice_is_1007() -> None:
    """The poison message is kept text that is not UTF-8 (what uvicorn's wsproto drops TCP on): 1007."""
    h, _ = delivery_session("at_least_once")
    send(h, b"caf\xc3")
    h.session.upstream.transport_lost()
    await idle()
    h.session.upstream.transport_lost()
    await idle()
    assert h.client.close_frames() == [(1007, "message #1 is not valid UTF-8: the upstream dropped it twice")]


async def test_invalid_utf8_behind_a_resent_window_message_is_found_and_named() -> None:
    """A confirmed message re-sent from the window comes first in the kept bytes: the UTF-8 check skips it
    and looks at #2, the message no upstream confirmed."""
    h, _ = delivery_session("at_least_once")
    send(h, b"fine")
    await confirm(h, h.upstream)
    send(h, b"caf\xc3")
    h.session.upstream.transport_lost()
    await idle()
    h.session.upstream.transport_lost()
    await idle()
    assert h.client.close_frames() == [(1007, "message #2 is not valid UTF-8: the upstream dropped it twice")]


async def test_twice_reset_while_sending_the_same_message_is_1009() -> None:
    """Both losses were TCP resets with the same message first unconfirmed: a size refusal, 1009."""
    h, _ = delivery_session("at_least_once")
    send(h, b"x" * 300)
    h.session.upstream.transport_lost(reset=True)
    await idle()
    h.session.upstream.transport_lost(reset=True)
    await idle()
    assert h.client.close_frames() == [(1009, "message #1 refused by the upstream twice (reset while sending)")]
    h.session.client.transport_lost()
    assert h.closes("client", 1009, "gateway", "message_too_big") == 1


async def test_a_reset_while_sending_a_message_too_large_to_resend_is_1009_at_once() -> None:
    """A 2 KiB message with buffer_bytes 1 KiB, reset by the upstream while sent: it cannot be re-sent,
    so the client hears 1009 at once, in either mode (not a silent loss)."""
    for mode in ("at_most_once", "at_least_once"):
        h, upstreams = delivery_session(mode, buffer_bytes="1KiB")
        send(h, b"small")
        await confirm(h, h.upstream)
        send(h, b"y" * 2048)
        h.session.upstream.transport_lost(reset=True)
        await advance(1.0)
        assert h.client.close_frames() == [
            (1009, "message #2 (2048 bytes) refused by the upstream (reset while sending; too large to re-send)")], mode
        assert not upstreams, "no reconnect"


async def test_an_orderly_close_during_a_large_message_is_an_outage() -> None:
    """No reset (the app closed TCP in order, as a restart does): the same message is an ordinary loss."""
    h, upstreams = delivery_session("at_most_once", buffer_bytes="1KiB")
    send(h, b"y" * 2048)
    h.session.upstream.transport_lost()
    await idle()
    assert h.session.state is SessionState.OPEN and len(upstreams) == 1
    assert lost(h, "unconfirmed") == 1


async def test_a_message_in_progress_at_the_loss_is_resent_whole_in_both_modes() -> None:
    """The first fragment went to the old upstream, the last comes during the outage: the new one gets
    the whole message (never a continuation without its start)."""
    for mode in ("at_most_once", "at_least_once"):
        h, upstreams = delivery_session(mode)
        h.from_client(client_frame(Opcode.TEXT, b"first half ", fin=False))
        h.session.upstream.transport_lost()
        h.from_client(client_frame(Opcode.CONTINUATION, b"second half"))
        await idle()
        frames = upstreams[0].frames()
        assert [(fin, op) for fin, op, _ in frames if op != Opcode.PING] == [
            (False, Opcode.TEXT), (True, Opcode.CONTINUATION)], mode
        assert b"".join(p for _, op, p in frames if op != Opcode.PING) == b"first half second half", mode


async def test_at_least_once_past_buffer_bytes_counts_the_messages_it_could_not_keep() -> None:
    """buffer_bytes 100: unconfirmed messages beyond what fits are lost, counted as overflow."""
    h, upstreams = delivery_session("at_least_once", buffer_bytes="100B", overflow="drop_oldest")
    send(h, b"x" * 60, b"y" * 60, b"z" * 10)
    h.session.upstream.transport_lost()
    await idle()
    assert texts(upstreams[0]) == [b"z" * 10]
    assert lost(h, "overflow") == 2


async def test_no_confirmation_ping_without_reconnection() -> None:
    """Reconnection off: nothing to confirm for, nothing extra on the wire."""
    h = open_session({"reconnect": {"enabled": False, "confirm_interval": "20ms"}})
    h.session.attach(h.client, h.client_flow, h.upstream, h.upstream_flow)  # type: ignore[arg-type]
    send(h, b"one")
    await advance(1.0)
    assert not pings(h.upstream)
