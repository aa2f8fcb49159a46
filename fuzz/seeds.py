"""Write the committed seed corpus: ``.venv/bin/python fuzz/seeds.py`` (the same files every time).

A handful of small inputs that reach past the first checks: valid client and server streams,
fragments, a re-headed frame, a violation followed by a close, the generated and discard modes
(see the input layout in fuzz_scanner.py), and response heads for fuzz_handshake.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gateway.core.handshake import accept_key  # noqa: E402
from tests.framegen import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, FrameSpec, encode  # noqa: E402

KEY = b"\x01\x02\x03\x04"


def frames(client: bool, *specs: tuple[int, bytes, bool]) -> bytes:
    return encode([FrameSpec(op, payload, fin=fin, masked=client, key=KEY) for op, payload, fin in specs])


SCANNER = {
    # flags, limits, cut seed (2 bytes), stream
    "client-text-ping-close": bytes((0x31, 0x00, 0, 1)) + frames(
        True, (TEXT, b"Hello", True), (PING, b"hb", True), (CLOSE, b"\x03\xe8bye", True)),
    "server-fragments-pong": bytes((0x20, 0x00, 0, 2)) + frames(
        False, (TEXT, b"Hel", False), (PONG, b"", True), (CONTINUATION, b"lo", True)),
    "client-reheaded-200": bytes((0x21, 0x08, 0, 3)) + frames(True, (BINARY, bytes(range(200)), True)),
    "server-violation-then-close": bytes((0x10, 0x00, 0, 4)) + bytes((0xC1, 0x01, 0x41)) + frames(
        False, (CLOSE, b"\x0f\xa0", True)),
    "server-over-limit": bytes((0x00, 0x02, 0, 5)) + frames(False, (BINARY, bytes(130), True), (CLOSE, b"", True)),
    "server-64-bit-length": bytes((0x10, 0x00, 0, 6)) + bytes((0x82, 0x7F)) + (70000).to_bytes(8, "big") + bytes(64),
    "generated": bytes((0x03, 0x00, 0, 7)) + bytes(range(7, 250, 3)),
    "generated-discard": bytes((0x06, 0x00, 0, 8)) + bytes(range(250, 10, -4)),
}

RESPONSE = (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key('dGhlIHNhbXBsZSBub25jZQ==')}")
HANDSHAKE = {
    "accept": b"\x00" + RESPONSE.encode(),
    "accept-subprotocol": b"\x00" + (RESPONSE + "\r\nSec-WebSocket-Protocol: chat.v1").encode(),
    "accept-extension": b"\x00" + (RESPONSE + "\r\nSec-WebSocket-Extensions: permessage-deflate").encode(),
    "refused": b"\x00HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 9",
    "request": b"\x01" + bytes(range(1, 120)),
}


def main() -> None:
    for target, seeds in (("scanner", SCANNER), ("handshake", HANDSHAKE)):
        folder = HERE / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    main()
