"""Edge cases of the delivery code found in review (gateway/core/delivery.py, gateway/delivery.py, their
use in gateway/session.py and gateway/core/replay.py). Each docstring says what went wrong before the fix
("The bug:") and what must happen."""

from __future__ import annotations

from gateway.core.codec import Opcode
from gateway.core.replay import MessageBuffer, OverflowPolicy
from gateway.session import SessionState
from tests.support import client_frame
from tests.unit.test_delivery_session import confirm, delivery_session, send
from tests.virtual_time import idle


def data_frames(transport: object) -> list[tuple[bool, int, bytes]]:
    return [f for f in transport.frames() if f[1] != Opcode.PING]  # type: ignore[attr-defined]


async def test_at_least_once_the_write_that_ends_a_cut_message_is_not_recorded_as_sent_upstream() -> None:
    """The bug: the new upstream is waiting while the hold skips the rest of a cut message;
    the client write that ends that message makes ``OutageHold.write`` call ``Session.upstream_back``
    synchronously, inside ``Leg.forward``. ``upstream_back`` re-attaches ``client.delivery``, and
    ``Leg.forward`` reads ``self.delivery`` only *after* ``out.write``, so it reports the same bytes
    to the ledger (``Confirmations.wrote``) although they went to the hold (skipped here; in general
    already part of the replay that ``Ledger.resent`` recorded). The ledger's offsets and kept bytes
    now contain a frame the new upstream never got: at the next loss it is re-sent, and the third
    upstream receives a bare continuation frame (a protocol error) before the real message.
    (Had the same write also carried a whole message, that message would be re-sent twice.)

    What should happen: only bytes really written to the upstream are recorded; the third upstream
    gets just the unconfirmed message ``next``."""
    h, upstreams = delivery_session("at_least_once", buffer_bytes="100B")
    h.from_client(client_frame(Opcode.TEXT, b"a" * 150, fin=False))  # too large to keep: cut
    h.session.upstream.transport_lost()
    await idle()
    assert len(upstreams) == 1 and h.session.state is SessionState.REPLAY_PENDING, "waiting for the cut message"
    h.from_client(client_frame(Opcode.CONTINUATION, b"end"))  # ends the skip: resumes inside this write
    assert h.session.state is SessionState.OPEN
    send(h, b"next")
    h.session.upstream.transport_lost()  # before any confirmation: "next" is re-sent
    await idle()
    assert len(upstreams) == 2
    assert data_frames(upstreams[1]) == [(True, Opcode.TEXT, b"next")]


async def test_at_most_once_a_message_in_progress_across_two_outages_is_resent_from_its_start() -> None:
    """The bug: at_most_once re-sends a message in progress at a loss from ``client.recent``
    (its start, kept by ``Leg._retain``). When the replay to a new upstream ends with the start of
    that message (it is still in progress), ``Session.upstream_back`` clears ``client.recent``, so from then
    on it holds only the fragments sent after the resume. If the new upstream is lost before the
    message ends, ``outage_buffer`` primes the replay buffer with those later fragments only, and the
    third upstream receives the message without its first frame: it starts with a continuation
    frame (a protocol error for the app), and "one " is silently lost. The poison rule does not
    step in, because the first unconfirmed message differs between the two losses (m3, then the
    message in progress).

    What should happen (docs/reconnection.md: a message the client was in the middle of sending is
    re-sent whole to the new upstream in both modes): the third upstream gets the whole message,
    starting with its TEXT frame."""
    h, upstreams = delivery_session("at_most_once")
    send(h, b"m1", b"m2")
    await confirm(h, h.upstream)
    send(h, b"m3", b"m4")  # unconfirmed: lost at the first loss (first unconfirmed: #3)
    h.from_client(client_frame(Opcode.TEXT, b"one ", fin=False))
    h.session.upstream.transport_lost()
    await idle()
    assert h.session.state is SessionState.OPEN
    assert data_frames(upstreams[0]) == [(False, Opcode.TEXT, b"one ")], "replayed from its start"
    h.from_client(client_frame(Opcode.CONTINUATION, b"two ", fin=False))
    h.session.upstream.transport_lost()  # first unconfirmed now #5: an outage, not poison
    await idle()
    h.from_client(client_frame(Opcode.CONTINUATION, b"three"))
    await idle()
    assert h.session.state is SessionState.OPEN and not h.client.close_frames()
    frames = data_frames(upstreams[1])
    assert frames and frames[0][1] == Opcode.TEXT, f"a continuation frame without its start: {frames}"
    assert b"".join(p for _, _, p in frames) == b"one two three"


def test_drop_oldest_does_not_drop_the_held_messages_for_a_message_that_can_never_fit() -> None:
    """The bug: under ``drop_oldest``, ``MessageBuffer._message_done`` drops the oldest messages
    "until the new one fits" before checking whether the new one can fit at all. A message larger
    than the whole buffer (it is then dropped itself, ``too_large``) first empties the buffer: every
    held message (in at_least_once, also the re-sent unconfirmed ones) is lost and counted as
    ``overflow``, although all of them fit.

    What should happen: the too-large message alone is dropped (``too_large``); the messages already
    held stay and are replayed. (A fix must then also keep ``Ledger.resent``'s numbering right:
    ``confirmed = complete_messages - replayed`` assumes the replayed messages are the last ones.)"""
    buffer = MessageBuffer(10, 100, OverflowPolicy.DROP_OLDEST)
    one, two = client_frame(Opcode.TEXT, b"one"), client_frame(Opcode.TEXT, b"two")
    buffer.feed(one + two + client_frame(Opcode.BINARY, b"x" * 200))
    assert buffer.dropped == {"too_large": 1}
    assert list(buffer.messages) == [one, two]
