"""The delivery ledger: confirmed positions, what an upstream loss leaves unconfirmed, what is kept to re-send."""

from __future__ import annotations

from gateway.core.delivery import Ledger


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
    assert ledger.confirmed == 3 and ledger.unconfirmed_boundary
    mark = ledger.mark()
    assert (mark.messages, ledger.kept_bytes) == (5, len(replay))
    ledger.wrote(b"end", b"", 6, True)
    ledger.confirm(mark)
    assert ledger.confirmed == 5 and ledger.kept_bytes == len(b"partial" + b"end")


def test_header_and_payload_of_a_reheaded_frame_are_kept_in_order() -> None:
    ledger = Ledger(keep_bytes=True, limit=1000)
    ledger.wrote(b"H", b"payload", 1, True)
    assert ledger.lost(1, False).resend == b"Hpayload"
