"""Header rules for the upstream request (gateway/core/forwarding.py), without sockets."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.core.forwarding import forward_headers, is_gateway_owned, offered_subprotocols

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


def test_hop_by_hop_and_connection_listed_headers_dropped() -> None:
    """Connection, Upgrade, Keep-Alive and headers named in Connection never go upstream."""
    result = forward_headers(
        [("Host", "a"), ("Connection", "Upgrade, X-Secret"), ("Upgrade", "websocket"), ("X-Secret", "1"),
         ("Keep-Alive", "5"), ("Sec-WebSocket-Extensions", "permessage-deflate"), ("Cookie", "c=1")],
        "192.0.2.1", TRUSTED)
    names = [n.lower() for n, _ in result.headers]
    assert "x-secret" not in names and "keep-alive" not in names and "upgrade" not in names
    assert "sec-websocket-extensions" not in names
    assert ("Cookie", "c=1") in result.headers


def test_untrusted_peer_headers_replaced() -> None:
    """An untrusted peer cannot choose its client IP or request id."""
    result = forward_headers([("X-Forwarded-For", "1.2.3.4"), ("X-Request-ID", "abc")], "192.0.2.1", TRUSTED)
    values = dict(result.headers)
    assert values["X-Forwarded-For"] == "192.0.2.1"
    assert result.client_ip == "192.0.2.1"
    assert values["X-Request-ID"] != "abc"


def test_trusted_chain_gives_rightmost_untrusted_address() -> None:
    """Through trusted proxies, the client is the right-most address that is not a proxy."""
    result = forward_headers([("X-Forwarded-For", "198.51.100.7, 10.1.1.1")], "10.2.2.2", TRUSTED)
    assert result.client_ip == "198.51.100.7"
    assert dict(result.headers)["X-Forwarded-For"] == "198.51.100.7, 10.1.1.1, 10.2.2.2"


def test_bad_request_id_from_trusted_proxy_replaced() -> None:
    """A request id with spaces or control characters is replaced even from a trusted proxy."""
    result = forward_headers([("X-Request-ID", "bad id\x01")], "10.0.0.1", TRUSTED)
    assert result.request_id != "bad id\x01"


def test_subprotocol_offer_kept_in_order() -> None:
    """Several Sec-WebSocket-Protocol headers and comma lists join in order."""
    assert offered_subprotocols([("Sec-WebSocket-Protocol", "a, b"), ("sec-websocket-protocol", "c")]) == \
        ["a", "b", "c"]


@pytest.mark.parametrize("peer", ["192.0.2.1", "10.0.0.1"])
def test_gateway_owned_headers_reach_the_upstream_once(peer: str) -> None:
    """Spoofed X-Gateway-* (any case, _ for -) never pass; each forwarding header goes upstream exactly once."""
    spoofed = [("X-Gateway-Session-Id", "victim"), ("x-gateway-reconnect", "1"), ("X_Gateway_Session_Id", "v2"),
               ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "7.7.7.7"), ("X-Forwarded-Proto", "https"),
               ("X-Forwarded-Port", "443"), ("X-Real-IP", "6.6.6.6"), ("Forwarded", "for=6.6.6.6"),
               ("X-Request-ID", "rid-1"), ("X-Request-ID", "rid-2"), ("Host", "app")]
    names = [name.lower().replace("_", "-") for name, _ in forward_headers(spoofed, peer, TRUSTED).headers]
    assert not [name for name in names if name.startswith("x-gateway-")]
    for owned in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"):
        assert names.count(owned) == 1, owned
    for owned in ("x-forwarded-port", "x-real-ip", "forwarded"):
        assert names.count(owned) == (1 if peer.startswith("10.") else 0), (owned, peer)


def test_is_gateway_owned_is_the_one_list() -> None:
    """The gateway's namespace and the forwarding headers are owned; ordinary headers are not."""
    for name in ("X-Gateway-Anything", "x_gateway_session_id", "X-Forwarded-Prefix", "Forwarded", "X-Real-IP",
                 "X-Request-ID"):
        assert is_gateway_owned(name), name
    for name in ("Cookie", "Authorization", "X-Gateway", "Origin"):
        assert not is_gateway_owned(name), name
