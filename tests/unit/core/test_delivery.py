"""The delivery ledger (confirmed positions, what an upstream loss leaves unconfirmed, what is kept to
re-send) and the rules that tell a refusal or a poison message from an outage."""

from __future__ import annotations

from gateway.core.codec import Opcode, build_frame
from gateway.core.delivery import MAX_BOUNDARIES, RECONNECT, Ledger, Loss, first_message_is_invalid_text, judge_loss


def write_messages(ledger: Ledger, first: int, count: int, size: int = 10) -> bytes:
    """``count`` whole messages of ``size`` bytes, one write each; returns their bytes."""
    sent = b""
    for n in range(first, first + count):
        data = bytes([n % 256]) * size
        ledger.wrote(data, b"", n + 1, True)
        sent += data
    return sent


def test_at_most_once_counts_what_no_pong_confirmed() -> None:
    """Only counts: the pong for a ping sent after 3 messages confirms 3; 4 more are unconfirmed at a loss."""
    ledger = Ledger(keep_bytes=False, limit=1000)
    write_messages(ledger, 0, 3)
    mark = ledger.mark()
    write_messages(ledger, 3, 4)
    ledger.confirm(mark)
    assert ledger.confirmed == 3
    lost = ledger.lost(7, False)
    assert (lost.messages, lost.resend, lost.resend_messages) == (4, b"", 0)
    assert ledger.kept_bytes == 0


def test_a_mark_taken_mid_message_confirms_only_up_to_the_last_boundary() -> None:
    """A ping sent while a message is in progress proves nothing about that message."""
    ledger = Ledger(keep_bytes=True, limit=1000)
    write_messages(ledger, 0, 2)
    ledger.wrote(b"first half", b"", 2, False)
    mark = ledger.mark()
    ledger.wrote(b"second half", b"", 3, True)
    ledger.confirm(mark)
    assert ledger.confirmed == 2
    lost = ledger.lost(3, False)
    assert lost.resend == b"first halfsecond half" and lost.resend_messages == 1


def test_at_least_once_keeps_the_unconfirmed_bytes_from_the_confirmed_boundary() -> None:
    """The kept bytes start at the confirmed boundary; a later confirmation trims them."""
    ledger = Ledger(keep_bytes=True, limit=1000)
    first = write_messages(ledger, 0, 2)
    mark = ledger.mark()
    later = write_messages(ledger, 2, 3)
    assert ledger.kept_bytes == len(first + later)
    ledger.confirm(mark)
    assert ledger.kept_bytes == len(later)
    lost = ledger.lost(5, False)
    assert (lost.messages, lost.resend, lost.resend_messages, lost.lost_overflow) == (3, later, 3, 0)


def test_the_start_of_a_message_in_progress_is_kept_with_the_whole_ones() -> None:
    """A message the client was in the middle of at the loss is re-sent from its start, after the whole ones."""
    ledger = Ledger(keep_bytes=True, limit=1000)
    whole = write_messages(ledger, 0, 1)
    ledger.wrote(b"partial", b"", 1, False)
    lost = ledger.lost(1, True)
    assert lost.resend == whole + b"partial" and lost.resend_messages == 1 and lost.kept_partial


def test_past_the_limit_keeping_stops_until_the_next_boundary_and_the_gap_is_counted() -> None:
    """Limit 25 bytes: messages 0-1 (20 bytes) kept, 2 overflows (dropped with them), 3-4 kept again."""
    ledger = Ledger(keep_bytes=True, limit=25)
    write_messages(ledger, 0, 2)
    ledger.wrote(b"x" * 10, b"", 3, False)  # message 2, first half: 30 bytes would be over the limit
    ledger.wrote(b"y" * 5, b"", 3, True)
    kept = write_messages(ledger, 3, 2)
    lost = ledger.lost(5, False)
    assert lost.resend == kept and lost.resend_messages == 2
    assert lost.messages == 5 and lost.lost_overflow == 3


def test_a_confirmation_older_than_the_kept_bytes_trims_nothing_but_counts() -> None:
    """A pong for a mark before the keeping restarted confirms messages; the kept bytes stay."""
    ledger = Ledger(keep_bytes=True, limit=15)
    write_messages(ledger, 0, 1)
    mark = ledger.mark()
    write_messages(ledger, 1, 1)  # 20 bytes: over the limit, kept again from the next boundary
    kept = write_messages(ledger, 2, 1)
    ledger.confirm(mark)
    assert ledger.confirmed == 1
    lost = ledger.lost(3, False)
    assert lost.resend == kept and lost.lost_overflow == 1


def test_after_a_replay_its_messages_are_the_unconfirmed_ones() -> None:
    """resent(): everything before the replay is settled; the replayed messages await confirmation anew."""
    ledger = Ledger(keep_bytes=True, limit=1000)
    write_messages(ledger, 0, 3)
    ledger.lost(3, False)
    replay = b"r" * 10 + b"s" * 10 + b"partial"
    ledger.resent(replay, 20, 5, 2)
    mark = ledger.mark()
    assert ledger.confirmed == 3 and mark.messages > ledger.confirmed, "the replayed messages await a pong"
    assert (mark.messages, ledger.kept_bytes) == (5, len(replay))
    ledger.wrote(b"end", b"", 6, True)
    ledger.confirm(mark)
    assert ledger.confirmed == 5 and ledger.kept_bytes == len(b"partial" + b"end")


def test_header_and_payload_of_a_reheaded_frame_are_kept_in_order() -> None:
    """A frame written as header and payload (re-headed by the scanner) is kept as one frame, in order."""
    ledger = Ledger(keep_bytes=True, limit=1000)
    ledger.wrote(b"H", b"payload", 1, True)
    assert ledger.lost(1, False).resend == b"Hpayload"


# --- the window of confirmed, possibly unhandled messages ----------------------------------------


def test_at_most_once_counts_the_last_window_confirmed_messages_as_possibly_unhandled() -> None:
    """Window 2: of 5 confirmed messages the last 2 are possibly unhandled; messages 1-3 are assumed handled."""
    ledger = Ledger(keep_bytes=False, limit=1000, window=2)
    write_messages(ledger, 0, 5)
    ledger.confirm(ledger.mark())
    write_messages(ledger, 5, 1)
    lost = ledger.lost(6, False)
    assert (lost.messages, lost.unhandled, lost.window, lost.assumed_handled) == (1, 2, 2, 3)


def test_the_window_never_reaches_back_past_what_was_settled_at_a_replay() -> None:
    """After a replay the messages before it are settled: a window of 10 covers only the 2 confirmed since."""
    ledger = Ledger(keep_bytes=False, limit=1000, window=10)
    write_messages(ledger, 0, 5)
    ledger.lost(5, False)
    ledger.resent(b"", 0, 5, 0)
    write_messages(ledger, 5, 2)
    ledger.confirm(ledger.mark())
    lost = ledger.lost(7, False)
    assert (lost.unhandled, lost.assumed_handled) == (2, 5)


def test_at_least_once_keeps_the_window_before_the_confirmed_boundary() -> None:
    """Window 2 messages: after confirming 4, messages 3-4 stay kept with the unconfirmed 5 and are re-sent."""
    ledger = Ledger(keep_bytes=True, limit=1000, window=2, window_bytes=1000)
    sent = write_messages(ledger, 0, 4)
    ledger.confirm(ledger.mark())
    later = write_messages(ledger, 4, 1)
    assert ledger.kept_bytes == 30
    lost = ledger.lost(5, False)
    assert lost.resend == sent[20:] + later
    assert (lost.resend_messages, lost.unhandled, lost.window) == (3, 0, 2)
    assert (lost.resend_from, lost.assumed_handled) == (2, 2)


def test_window_messages_past_window_bytes_are_not_kept_but_counted() -> None:
    """Window 3 messages in 15 bytes: only the last 10-byte message fits; the other 2 are unhandled."""
    ledger = Ledger(keep_bytes=True, limit=1000, window=3, window_bytes=15)
    sent = write_messages(ledger, 0, 4)
    ledger.confirm(ledger.mark())
    lost = ledger.lost(4, False)
    assert lost.resend == sent[30:] and (lost.resend_messages, lost.unhandled, lost.window) == (1, 2, 3)


def test_one_write_of_several_messages_keeps_the_window_whole() -> None:
    """Boundaries are known at the end of writes: a write of 3 messages is kept whole for a window of 2
    (one more possible duplicate, never one less)."""
    ledger = Ledger(keep_bytes=True, limit=1000, window=2, window_bytes=1000)
    ledger.wrote(b"x" * 30, b"", 3, True)
    ledger.confirm(ledger.mark())
    lost = ledger.lost(3, False)
    assert (lost.resend_messages, lost.unhandled) == (3, 0)


def test_the_ledger_remembers_a_bounded_number_of_boundaries() -> None:
    """Past MAX_BOUNDARIES writes without a pong the newest boundary replaces the last one: memory stays
    bounded and the window can only start further back."""
    ledger = Ledger(keep_bytes=True, limit=1 << 20, window=1, window_bytes=1 << 20)
    write_messages(ledger, 0, MAX_BOUNDARIES + 100, size=1)
    assert len(ledger._boundaries) == MAX_BOUNDARIES
    ledger.confirm(ledger.mark())
    lost = ledger.lost(MAX_BOUNDARIES + 100, False)
    assert lost.resend_messages >= 1 and lost.unhandled == 0


def test_highest_confirmed_survives_a_replay() -> None:
    """A replay lowers ``confirmed`` to the settled count; ``highest_confirmed`` keeps what any upstream read."""
    ledger = Ledger(keep_bytes=True, limit=1000, window=2, window_bytes=1000)
    write_messages(ledger, 0, 3)
    ledger.confirm(ledger.mark())
    lost = ledger.lost(3, False)
    ledger.resent(lost.resend, len(lost.resend), 3, lost.resend_messages)
    assert (ledger.confirmed, ledger.highest_confirmed) == (1, 3)


def test_invalid_text_after_skipped_messages_is_found() -> None:
    """skip=1 passes over a valid first message (two fragments) to the invalid second one."""
    first = (build_frame(Opcode.TEXT, b"ok", masked=True, fin=False)
             + build_frame(Opcode.CONTINUATION, b"!", masked=True))
    bad = build_frame(Opcode.TEXT, b"caf\xc3", masked=True)
    assert not first_message_is_invalid_text(first + bad)
    assert first_message_is_invalid_text(first + bad, skip=1)


# --- refusals and poison messages -------------------------------------------------------------------


def test_a_reset_while_sending_a_message_too_large_to_keep_is_a_refusal() -> None:
    """A TCP reset while the upstream read a message too large to re-send: 1009 naming the message and its size."""
    loss = Loss(first_unconfirmed=3, reset=True, last_message=3, last_size=5 << 20)
    verdict = judge_loss(loss, None, 1 << 20, False)
    assert verdict.code == 1009 and verdict.message == 3
    assert verdict.reason.startswith("message #3 (5242880 bytes) refused by the upstream")


def test_no_refusal_without_a_reset_or_when_the_message_fits_or_was_confirmed() -> None:
    """No reset, a message that fits, or nothing unconfirmed: an ordinary outage, the session reconnects."""
    base = {"first_unconfirmed": 3, "reset": True, "last_message": 3, "last_size": 5 << 20}
    assert judge_loss(Loss(**{**base, "reset": False}), None, 1 << 20, False) is RECONNECT
    assert judge_loss(Loss(**{**base, "last_size": 1000}), None, 1 << 20, False) is RECONNECT
    assert judge_loss(Loss(**{**base, "first_unconfirmed": 0}), None, 1 << 20, False) is RECONNECT


def test_the_same_first_unconfirmed_message_at_two_losses_is_poison() -> None:
    """1007 for invalid UTF-8, 1009 after two resets, 1011 otherwise; a different message is an outage."""
    first = Loss(first_unconfirmed=4, reset=False, last_message=5, last_size=10)
    again = Loss(first_unconfirmed=4, reset=False, last_message=4, last_size=10)
    assert judge_loss(again, first, 1000, False).code == 1011
    assert judge_loss(again, first, 1000, True).code == 1007
    resets = Loss(first_unconfirmed=4, reset=True, last_message=4, last_size=10)
    assert judge_loss(resets, resets, 1000, False).code == 1009
    assert judge_loss(resets, first, 1000, False).code == 1011, "one reset is not a pattern"
    later = Loss(first_unconfirmed=5, reset=False, last_message=5, last_size=10)
    assert judge_loss(later, first, 1000, False) is RECONNECT


def test_a_ping_timeout_at_either_loss_is_never_poison() -> None:
    """A busy app that stops reading times out with the same message first in line each time: the
    session reconnects instead of blaming the message (even invalid UTF-8 is not judged on that)."""
    crash = Loss(first_unconfirmed=4, reset=False, last_message=5, last_size=10)
    timeout = Loss(first_unconfirmed=4, reset=False, last_message=5, last_size=10, timed_out=True)
    assert judge_loss(timeout, crash, 1000, False) is RECONNECT
    assert judge_loss(crash, timeout, 1000, True) is RECONNECT
    assert judge_loss(timeout, timeout, 1000, False) is RECONNECT
    assert judge_loss(crash, crash, 1000, False).code == 1011, "without a timeout the rule still holds"


def test_invalid_text_is_found_in_the_first_message_only() -> None:
    """Only the first message's UTF-8 is judged, across fragments; a cut or later message does not count."""
    def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
        return build_frame(opcode, payload, masked=True, fin=fin)

    assert first_message_is_invalid_text(masked(Opcode.TEXT, b"caf\xc3"))
    assert not first_message_is_invalid_text(masked(Opcode.TEXT, "café".encode()))
    assert not first_message_is_invalid_text(masked(Opcode.BINARY, b"\xff"))
    fragments = masked(Opcode.TEXT, b"caf\xc3", fin=False) + masked(Opcode.CONTINUATION, b"\xa9")
    assert not first_message_is_invalid_text(fragments), "a character split across fragments is valid"
    assert first_message_is_invalid_text(masked(Opcode.TEXT, b"ok\xff", fin=False) + masked(Opcode.CONTINUATION, b""))
    assert not first_message_is_invalid_text(masked(Opcode.TEXT, b"ok") + masked(Opcode.TEXT, b"\xff"))
    assert not first_message_is_invalid_text(masked(Opcode.TEXT, b"x" * 300)[:100]), "incomplete: unknown"
