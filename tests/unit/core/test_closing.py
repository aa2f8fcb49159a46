"""One leg's closing handshake (gateway/core/closing.py), as pure data: who closes TCP when, what goes on the wire."""

from __future__ import annotations

from gateway.core.closing import Close, ClosingHandshake, LegState, Role


def test_server_closes_tcp_once_both_closes_are_exchanged() -> None:
    """The gateway as server (client leg): TCP closes after sending and receiving, whichever came first."""
    ours_first = ClosingHandshake(Role.SERVER)
    assert ours_first.send(Close(1001, "going"))
    assert not ours_first.should_close_transport
    ours_first.receive(Close(1001, ""))
    assert ours_first.should_close_transport
    theirs_first = ClosingHandshake(Role.SERVER)
    theirs_first.receive(Close(1000, "bye"))
    assert not theirs_first.should_close_transport
    theirs_first.send(Close(1000, "bye"))
    assert theirs_first.should_close_transport


def test_client_waits_for_the_server_to_close_tcp() -> None:
    """The gateway as client (upstream leg) does not close TCP after the exchange: the app does (RFC 6455 7.1.1)."""
    handshake = ClosingHandshake(Role.CLIENT)
    handshake.send(Close(1000))
    handshake.receive(Close(1000))
    assert not handshake.should_close_transport
    handshake.transport_lost()
    assert handshake.state is LegState.CLOSED


def test_a_peer_that_broke_off_is_not_waited_for_on_either_side() -> None:
    """An invalid close or unframeable bytes: once our close is out, TCP closes, server or client."""
    for role in Role:
        handshake = ClosingHandshake(role)
        handshake.peer_broke_off()
        handshake.send(Close(1002, "bad"))
        assert handshake.should_close_transport, role


def test_only_one_close_is_sent_and_none_after_tcp_is_gone() -> None:
    """A second close, or a close after the connection dropped, is not written."""
    handshake = ClosingHandshake(Role.SERVER)
    assert handshake.send(Close(1000))
    assert not handshake.send(Close(1011))
    lost = ClosingHandshake(Role.SERVER)
    lost.transport_lost()
    assert not lost.send(Close(1000)) and not lost.can_send_data


def test_code_and_sentence_for_logs() -> None:
    """The leg's code is the first close either way (1006 with none); the sentence says what happened."""
    timed_out = ClosingHandshake(Role.SERVER)
    timed_out.send(Close(1011, "keepalive ping timeout"))
    timed_out.transport_lost()
    assert timed_out.code == 1011
    assert timed_out.describe() == "sent 1011 (internal error) keepalive ping timeout; no close frame received"
    relayed = ClosingHandshake(Role.CLIENT)
    relayed.receive(Close(4003, "forbidden"))
    relayed.send(Close(4003, "forbidden"))
    assert relayed.code == 4003
    assert relayed.describe() == "received 4003 (private use) forbidden; sent 4003 (private use) forbidden"
    vanished = ClosingHandshake(Role.SERVER)
    vanished.transport_lost()
    assert vanished.code == 1006
    assert Close(1005).payload() == b"" and str(Close(1005)) == "a close frame with no code"
