"""gateway.core.outage: an upstream loss judged, and the replay buffer an outage starts with."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.core.codec import Opcode, build_frame
from gateway.core.config import load_config
from gateway.core.delivery import RECONNECT, Unconfirmed
from gateway.core.outage import LossCause, judge_outage, outage_buffer


@dataclass
class Positions:
    """The client leg's message positions, as a test states them."""

    complete_messages: int = 0
    in_message: bool = False
    at_boundary: bool = True
    last_message_size: int = 0


def client_message(text: bytes) -> bytes:
    return build_frame(Opcode.TEXT, text, masked=True)


def reconnect_config(**settings: object) -> object:
    return load_config(overrides={"reconnect": {"enabled": True, **settings}}, environ={}).reconnect


NOTHING = Unconfirmed(messages=0, resend=b"", resend_messages=0, lost_overflow=0, kept_partial=False)


def test_the_loss_names_the_first_message_no_upstream_confirmed_and_is_returned_for_the_next() -> None:
    """Five messages written, three read by some upstream: message #4 is the one the rules watch;
    the same #4 at the next loss is a poison message (1011), unless that loss was a ping timeout."""
    positions = Positions(complete_messages=5, last_message_size=10)
    verdict, loss = judge_outage(NOTHING, positions, 3, None, LossCause(), 1 << 20)
    assert verdict is RECONNECT and loss.first_unconfirmed == 4 and loss.last_message == 5
    again, _ = judge_outage(NOTHING, positions, 3, loss, LossCause(), 1 << 20)
    assert again.code == 1011 and again.message == 4
    timed_out, second = judge_outage(NOTHING, positions, 3, loss, LossCause(timed_out=True), 1 << 20)
    assert timed_out is RECONNECT and second.timed_out


def test_everything_confirmed_names_no_message() -> None:
    """All five messages read and none in progress: nothing is pending, no rule can apply."""
    verdict, loss = judge_outage(NOTHING, Positions(complete_messages=5), 5, None, LossCause(reset=True), 1 << 20)
    assert verdict is RECONNECT and loss.first_unconfirmed == 0 and loss.reset


def test_invalid_utf8_in_the_first_resent_message_is_judged_past_the_window() -> None:
    """at_least_once re-sends the window (message #3) before the first unconfirmed one (#4); only #4's
    text is judged, so invalid UTF-8 there makes the second loss a 1007."""
    resend = client_message(b"fine") + client_message(b"caf\xc3")
    unconfirmed = replace(NOTHING, messages=1, resend=resend, resend_messages=2, resend_from=2, window=1)
    positions = Positions(complete_messages=4, last_message_size=4)
    _, first = judge_outage(unconfirmed, positions, 3, None, LossCause(), 1 << 20)
    verdict, _ = judge_outage(unconfirmed, positions, 3, first, LossCause(), 1 << 20)
    assert verdict.code == 1007 and verdict.message == 4


def test_at_most_once_counts_the_window_and_the_unconfirmed_and_keeps_nothing() -> None:
    """Nothing is re-sent at most once: 2 window messages counted ``unhandled``, 3 ``unconfirmed``."""
    config = reconnect_config(delivery="at_most_once")
    start = outage_buffer(config, replace(NOTHING, messages=3, unhandled=2, window=2), False, bytearray(), False)
    assert start.lost == {"unhandled": 2, "unconfirmed": 3} and not start.overflow
    assert not start.buffer.messages and start.buffer.bytes == 0


def test_at_most_once_keeps_the_start_of_a_message_in_progress_to_resend_it_whole() -> None:
    """The client was in the middle of a fragmented message: its first fragment primes the buffer."""
    config = reconnect_config(delivery="at_most_once")
    first_fragment = build_frame(Opcode.TEXT, b"par", masked=True, fin=False)
    start = outage_buffer(config, NOTHING, True, bytearray(first_fragment), False)
    assert start.buffer.bytes == 0 and not start.buffer.skipping, "held as the start of a message, not whole"
    start.buffer.feed(build_frame(Opcode.CONTINUATION, b"t", masked=True))
    assert len(start.buffer.messages) == 1 and start.buffer.drain().startswith(first_fragment)


def test_at_least_once_primes_the_buffer_with_what_it_kept_and_counts_what_it_could_not() -> None:
    """Two kept messages go first (each a possible duplicate); one past the byte limit is ``overflow``."""
    config = reconnect_config(delivery="at_least_once")
    kept = client_message(b"m1") + client_message(b"m2")
    start = outage_buffer(config, replace(NOTHING, messages=3, resend=kept, resend_messages=2, lost_overflow=1),
                          False, None, False)
    assert start.lost == {"unhandled": 0, "overflow": 1} and not start.overflow
    assert len(start.buffer.messages) == 2 and start.buffer.drain() == kept


def test_kept_messages_that_overflow_under_the_close_policy_say_why() -> None:
    """buffer_messages 1 and no window: the second kept message does not fit; the ``close`` policy makes
    the session close the client, and the message that did not fit is counted ``overflow``."""
    config = reconnect_config(delivery="at_least_once", buffer_messages=1, app_queue_messages=0, overflow="close")
    kept = client_message(b"m1") + client_message(b"m2")
    start = outage_buffer(config, replace(NOTHING, messages=2, resend=kept, resend_messages=2), False, None, False)
    assert start.overflow and start.lost["overflow"] == 1
