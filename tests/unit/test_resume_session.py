"""Client resume as the session applies it (docs/resume.md), on fake transports and virtual time: the
wait for a client that dropped, the grace period's expiry, the splice of a resuming connection, the
previous token retired by the pong that confirms the new one, and the replay log overflowing while
the client is away. The wire protocol's pure parts are tests/unit/core/test_resume.py; the real
clients (Python, Node, Chromium) are tests/integration/test_resume*.py."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.core.backoff import Breaker
from gateway.core.codec import Opcode
from gateway.core.resume import MARKER, token_key
from gateway.outage import RecoveryPlan
from gateway.resume import ResumeState
from gateway.session import SessionState
from tests.fakes import FakeFlow, FakeTransport, Harness, attach, open_session
from tests.support import client_frame
from tests.virtual_time import advance, idle

GRACE = 5.0


def resumable_session(**resume: Any) -> tuple[Harness, dict[bytes, Any], str]:
    """A resumable session as the accept step builds one: its state, its first token (the hello's), attached."""
    h = open_session({"resume": {"grace": f"{GRACE:g}s", "confirm_interval": "100ms", **resume}})
    registry: dict[bytes, Any] = {}
    h.session.resume = ResumeState(h.config.resume, registry, h.session, MARKER)
    token = h.session.resume.issue_token()
    return attach(h), registry, token


def resume_results(h: Harness, result: str) -> float:
    return h.registry.get_sample_value("ws_gateway_client_resumes_total", {"result": result}) or 0.0


def texts(transport: FakeTransport) -> list[bytes]:
    return [payload for _, opcode, payload in transport.frames() if opcode == Opcode.TEXT]


def app_says(h: Harness, text: bytes) -> None:
    h.from_upstream(h.app_frame(Opcode.TEXT, text))


async def test_a_resumable_client_that_drops_is_waited_for_and_the_apps_messages_kept() -> None:
    """No close frame from the client: the app's leg stays open, the session does not end, and what the
    app sends meanwhile goes to the replay log only."""
    h, _, _ = resumable_session()
    app_says(h, b"before")
    h.session.client.transport_lost()
    assert h.session.state is SessionState.CLIENT_AWAY
    app_says(h, b"while away")
    assert h.upstream.close_frames() == [] and not h.upstream.closed and not h.session.done.done()
    assert texts(h.client) == [b"before"], "nothing is written to the lost connection"
    assert h.session.resume is not None and h.session.resume.log.messages == 2


async def test_the_grace_period_ends_the_session_as_a_client_loss() -> None:
    """resume.grace after the drop, exactly: the app gets 1001, counted as ``expired``; the tokens stop
    working once the session is over."""
    h, registry, token = resumable_session()
    h.session.client.transport_lost()
    await advance(GRACE - 0.001)
    assert h.upstream.close_frames() == [] and resume_results(h, "expired") == 0
    await advance(0.001)
    assert h.upstream.close_frames() == [(1001, "client connection lost")]
    assert resume_results(h, "expired") == 1
    h.session.upstream.transport_lost()
    assert h.session.done.done() and token_key(token) not in registry


async def test_a_resume_splices_the_new_connection_in_with_what_the_client_lacks() -> None:
    """The client had the app's first message; the new connection gets the ``resumed`` message (a new
    token, and how many of the client's messages reached the app), then the app's second message, then
    live traffic both ways."""
    h, _, token = resumable_session()
    h.from_client(client_frame(Opcode.TEXT, b"hello app"))
    app_says(h, b"one")
    h.session.client.transport_lost()
    app_says(h, b"two")
    new = FakeTransport("resumed client")
    resume = h.session.resume
    assert resume is not None and resume.can_resume(1) and not resume.can_resume(3), "not more than was sent"
    assert h.session.splice_client(new, FakeFlow(), None, 1)  # type: ignore[arg-type]
    assert h.session.state is SessionState.OPEN
    first, *rest = texts(new)
    announced = orjson.loads(first)
    assert announced["ws-gateway"] == "resumed" and announced["received"] == 1 and announced["token"] != token
    assert rest == [b"two"]
    app_says(h, b"three")
    h.from_client(client_frame(Opcode.TEXT, b"I am back"))
    assert texts(new)[-1] == b"three"
    assert [p for _, op, p in h.upstream.frames() if op == Opcode.TEXT] == [b"hello app", b"I am back"]
    assert resume_results(h, "resumed") == 1


async def test_the_previous_token_works_until_the_client_confirms_the_new_one() -> None:
    """After a splice both tokens are registered (the new one may not have reached the client); the pong
    to the ping that followed the ``resumed`` message retires the old one."""
    h, registry, token = resumable_session()
    h.session.client.transport_lost()
    new = FakeTransport("resumed client")
    assert h.session.splice_client(new, FakeFlow(), None, 0)  # type: ignore[arg-type]
    next_token = orjson.loads(texts(new)[0])["token"]
    assert registry.keys() == {token_key(token), token_key(next_token)}
    pings = [payload for _, opcode, payload in new.frames() if opcode == Opcode.PING]
    assert len(pings) == 1
    h.from_client(client_frame(Opcode.PONG, b"not that one"))
    assert token_key(token) in registry
    h.from_client(client_frame(Opcode.PONG, pings[0]))
    assert registry.keys() == {token_key(next_token)} and registry[token_key(next_token)] is h.session


async def test_the_replay_log_overflowing_while_away_ends_the_session_at_once() -> None:
    """resume.buffer_bytes 1 KiB: a 2 KiB message from the app while the client is away cannot be
    kept, so no resume could be whole: the app gets 1001 before the grace period, counted ``overflow``."""
    h, _, _ = resumable_session(buffer_bytes="1KiB")
    h.session.client.transport_lost()
    app_says(h, b"x" * 2048)
    await idle()
    assert h.upstream.close_frames() == [(1001, "client connection lost")]
    assert resume_results(h, "overflow") == 1 and resume_results(h, "expired") == 0


async def test_a_client_that_drops_in_the_middle_of_a_message_is_not_waited_for() -> None:
    """The app has half of a client message: what the client would re-send cannot be told apart from
    it, so the drop ends the session at once, as for any client."""
    h, _, _ = resumable_session()
    h.from_client(client_frame(Opcode.TEXT, b"first half", fin=False))
    h.session.client.transport_lost()
    assert h.session.state is SessionState.CLOSING
    assert h.upstream.close_frames() == [(1001, "client connection lost")]
    assert resume_results(h, "expired") == resume_results(h, "overflow") == 0


async def test_an_upstream_loss_while_the_client_is_away_ends_the_session_without_an_outage() -> None:
    """Reconnection enabled, client away: nobody could be replayed to, so the app's loss closes the
    session (state CLOSING, not RECONNECTING) and the wait ends uncounted."""
    h = open_session({"resume": {"grace": f"{GRACE:g}s"}, "reconnect": {"enabled": True}})
    h.session.resume = ResumeState(h.config.resume, {}, h.session, MARKER)
    h.session.resume.issue_token()
    config = h.config.reconnect
    attempts: list[int] = []

    async def reopen(attempt: int) -> Any:
        attempts.append(attempt)
        raise AssertionError("no outage while the client is away")

    attach(h, RecoveryPlan(config, reopen=reopen, subprotocol=None, delays=lambda: iter([0.0]),
                           breaker=Breaker(config.max_reconnects, config.breaker_window)))
    h.session.client.transport_lost()
    assert h.session.state is SessionState.CLIENT_AWAY
    h.session.upstream.transport_lost()
    assert h.session.state is SessionState.CLOSED
    await idle()
    assert attempts == [] and resume_results(h, "expired") == 0


def compressed(h: Harness, direction: str, form: str | None = None) -> float:
    """compressed_messages_total for ``direction``, or compressed_payload_bytes_total in ``form``."""
    if form is None:
        return h.registry.get_sample_value("ws_gateway_compressed_messages_total", {"direction": direction}) or 0.0
    labels = {"direction": direction, "form": form}
    return h.registry.get_sample_value("ws_gateway_compressed_payload_bytes_total", labels) or 0.0


async def test_counts_go_on_across_a_resume_that_agrees_compression_differently() -> None:
    """The session owns its counts: a client that compressed, dropped and resumed without compression
    keeps the compressed messages counted (a counter never goes back), and its messages go on being
    numbered where the first connection left off."""
    from gateway.core.compression import negotiate
    from tests.unit.core.test_inflate import client_compressed

    h = open_session({"resume": {"grace": f"{GRACE:g}s"}})
    agreement = negotiate("permessage-deflate", h.config.client.compression)
    assert agreement is not None
    h.session.resume = ResumeState(h.config.resume, {}, h.session, MARKER)
    h.session.resume.issue_token()
    h.session.attach(h.client, h.client_flow, h.upstream, h.upstream_flow,  # type: ignore[arg-type]
                     compression=agreement)
    h.from_client(client_compressed([b"hello " * 20, b"again " * 20]))
    app_says(h, b"from the app " * 20)
    before = {key: compressed(h, *key) for key in (
        ("client_to_upstream",), ("upstream_to_client",), ("client_to_upstream", "wire"),
        ("client_to_upstream", "plain"), ("upstream_to_client", "wire"), ("upstream_to_client", "plain"))}
    assert before[("client_to_upstream",)] == 2 and before[("upstream_to_client",)] == 1
    assert before[("client_to_upstream", "plain")] == 240 and before[("upstream_to_client", "plain")] == 260
    h.session.client.transport_lost()
    new = FakeTransport("resumed client, no compression")
    assert h.session.splice_client(new, FakeFlow(), None, 1)  # type: ignore[arg-type]
    assert h.session.client.positions.complete_messages == 2, "numbering goes on after the two messages"
    h.from_client(client_frame(Opcode.TEXT, b"plain now"))
    assert h.session.client.positions.complete_messages == 3
    assert {key: compressed(h, *key) for key in before} == before
    assert h.registry.get_sample_value("ws_gateway_messages_total", {"direction": "client_to_upstream"}) == 3
