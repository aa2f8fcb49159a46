"""Coverage-guided fuzzing of the upstream upgrade codec (atheris / libFuzzer).

Run by ``make fuzz``; by hand: ``.venv/bin/python fuzz/fuzz_handshake.py -max_total_time=60 DIR fuzz/corpus/handshake``.

Byte 0 picks what the rest of the input is:

* even: an upstream's response head. ``parse_upgrade_response`` must return a response or raise
  ``HandshakeError``, nothing else; a parsed response goes through ``check_accept``, which must
  return an offered subprotocol (or None) or raise ``HandshakeError``.
* odd: the makings of an upgrade request (host, target, header names and values, mapped onto
  the characters HTTP allows). ``build_upgrade_request``'s bytes must parse with h11 as
  ``GET target HTTP/1.1`` with exactly the upgrade headers and then the given ones, in order.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

import atheris
import h11  # imported before instrumenting, so only our code is instrumented

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["gateway"]):
    from gateway.core.handshake import HandshakeError, build_upgrade_request, check_accept, parse_upgrade_response

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
OFFERED = ["chat.v2", "chat.v1"]
TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
VALUE = "".join(chr(c) for c in range(0x21, 0x7F)) + "".join(chr(c) for c in range(0xA0, 0x100)) + " "
PATH = string.ascii_letters + string.digits + "-._~%/?=&"


def check_response(head: bytes) -> None:
    try:
        response = parse_upgrade_response(head)
    except HandshakeError:
        return
    try:
        protocol = check_accept(response, KEY, OFFERED)
    except HandshakeError:
        return
    assert protocol is None or protocol in OFFERED, protocol


def mapped(data: bytes, alphabet: str) -> str:
    return "".join(alphabet[b % len(alphabet)] for b in data)


def check_request(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    host = mapped(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 20)), string.ascii_lowercase + string.digits + ".-:")
    target = "/" + mapped(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)), PATH)
    headers = []
    reserved = {"host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version", "content-length",
                "transfer-encoding"}
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        name = mapped(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16)), TOKEN)
        value = mapped(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)), VALUE).strip()
        if name and name.lower() not in reserved:
            headers.append((name, value))
    if not host:
        return
    raw = build_upgrade_request(host, target, KEY, headers)
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(raw)
    request = parser.next_event()
    assert isinstance(request, h11.Request), request
    assert (request.method, request.target) == (b"GET", target.encode("latin-1"))
    got = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers.raw_items()]
    assert got == [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", KEY),
                   ("Sec-WebSocket-Version", "13"), *headers], got


def test_one_input(data: bytes) -> None:
    """One fuzzer input: a response head to parse, or a request to build and parse back."""
    if not data:
        return
    if data[0] % 2 == 0:
        check_response(data[1:])
    else:
        check_request(data[1:])


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
