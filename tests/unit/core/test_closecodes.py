"""Close-code policy: what may go on the wire, causes, and bounded labels."""

from __future__ import annotations

from gateway.core.closecodes import (
    CODE_LABELS,
    Cause,
    CloseCode,
    cause_for_code,
    code_label,
    is_valid_wire_code,
)


def test_only_codes_a_peer_accepts_are_valid_on_the_wire() -> None:
    """1005, 1006 and 1015 (and unassigned ranges) are never valid in a close frame; the usual codes are."""
    for code in (CloseCode.NO_STATUS, CloseCode.ABNORMAL, CloseCode.TLS_HANDSHAKE, 0, 999, 1004, 1016, 2000, 5000):
        assert not is_valid_wire_code(code), code
    for code in (1000, 1001, 1008, 1011, 1012, 3000, 4999):
        assert is_valid_wire_code(code), code


def test_causes_for_peer_codes() -> None:
    """Peer codes map onto the fixed cause set; application codes are deliberate, so normal."""
    assert cause_for_code(1000) is Cause.NORMAL
    assert cause_for_code(1001) is Cause.GOING_AWAY
    assert cause_for_code(1009) is Cause.MESSAGE_TOO_BIG
    assert cause_for_code(1012) is Cause.SHUTDOWN
    assert cause_for_code(1006) is Cause.ABNORMAL
    assert cause_for_code(4001) is Cause.NORMAL


def test_code_labels_bounded() -> None:
    """Registered codes are their number; everything else falls in three buckets."""
    assert code_label(1009) == "1009"
    assert code_label(3500) == "3xxx"
    assert code_label(4242) == "4xxx"
    assert code_label(1004) == "other"
    assert code_label(65000) == "other"
    assert {code_label(c) for c in range(0, 70000)} <= set(CODE_LABELS)
