"""Client resume (issue 11), the pure parts: the subprotocol offer, tokens, and the replay log."""

from __future__ import annotations

import orjson
import pytest

from gateway.core.codec import Opcode, build_frame
from gateway.core.resume import MARKER, ReplayLog, hello, new_token, parse_offer, resumed, token_key


def frame(payload: bytes, fin: bool = True, opcode: int = Opcode.TEXT) -> bytes:
    return build_frame(opcode, payload, masked=False, fin=fin)


def messages_in(data: bytes) -> list[bytes]:
    from tests.fakes import parse_frames

    out, parts = [], []
    for fin, _opcode, payload in parse_frames(data):
        parts.append(payload)
        if fin:
            out.append(b"".join(parts))
            parts = []
    if parts:
        out.append(b"".join(parts) + b"...")  # an incomplete last message, marked
    return out


def test_offer_splits_the_gateways_entries_from_the_apps() -> None:
    """The gateway's resume entries are taken out of the subprotocol offer; the app's pass on in order."""
    token = new_token()
    offer = parse_offer(["chat.v1", MARKER, f"ws-gateway.resume.{token}.17"])
    assert offer.resumable and offer.token == token and offer.received == 17 and not offer.malformed
    assert offer.app_protocols == ("chat.v1",)
    plain = parse_offer(["chat.v1", "chat.v2"])
    assert not plain.resumable and plain.token is None and plain.app_protocols == ("chat.v1", "chat.v2")
    assert parse_offer([MARKER]) == parse_offer([MARKER])  # a new resumable session
    assert parse_offer([MARKER]).token is None


@pytest.mark.parametrize("entry", [
    "ws-gateway.resume.short.1",
    "ws-gateway.resume." + "A" * 32 + ".01",  # no leading zeros
    "ws-gateway.resume." + "A" * 32 + ".-1",
    "ws-gateway.resume." + "A" * 31 + "=.1",
    "ws-gateway.resume." + "A" * 32,
])
def test_malformed_resume_entries_are_refused_like_unknown_tokens(entry: str) -> None:
    """A resume entry with a bad token or position is malformed, and its token is not used."""
    offer = parse_offer([MARKER, entry])
    assert offer.malformed and offer.token is None


def test_a_resume_without_the_marker_or_with_two_tokens_is_malformed() -> None:
    """A resume entry without the resumable marker, or two resume entries, make the offer malformed."""
    token = new_token()
    assert parse_offer([f"ws-gateway.resume.{token}.1"]).malformed
    assert parse_offer([MARKER, f"ws-gateway.resume.{token}.1", f"ws-gateway.resume.{token}.2"]).malformed


def test_tokens_are_192_bits_url_safe_and_kept_only_as_a_hash() -> None:
    """Tokens are 32 URL-safe characters, all distinct; the registry key is a hash not containing the token."""
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000 and all(len(t) == 32 for t in tokens)
    token = next(iter(tokens))
    assert token_key(token) == token_key(token) and len(token_key(token)) == 32
    assert token.encode() not in token_key(token)
    assert parse_offer([MARKER, f"ws-gateway.resume.{token}.0"]).token == token


def test_hello_and_resumed_are_json_the_helper_reads() -> None:
    """The hello and resumed notices are the JSON objects the client helper parses."""
    assert orjson.loads(hello("t" * 32, 30)) == {"ws-gateway": "resumable", "token": "t" * 32, "grace_ms": 30000}
    assert orjson.loads(resumed("u" * 32, 5)) == {"ws-gateway": "resumed", "token": "u" * 32, "received": 5}


def test_replay_log_gives_what_the_client_lacks_and_forgets_what_it_confirmed() -> None:
    """The replay log returns the frames after a position, and drops what the client confirmed."""
    log = ReplayLog(limit=1 << 20)
    log.append(frame(b"one") + frame(b"two"))
    log.append(frame(b"thr", fin=False))
    log.append(frame(b"ee", opcode=Opcode.CONTINUATION) + frame(b"four"))
    assert log.messages == 4
    assert messages_in(log.frames_after(0) or b"") == [b"one", b"two", b"three", b"four"]
    assert messages_in(log.frames_after(2) or b"") == [b"three", b"four"]
    assert log.frames_after(4) == b""
    assert log.frames_after(5) is None  # more than was sent
    log.confirm(2)
    assert log.frames_after(1) is None  # fewer than it confirmed: not kept any more
    assert messages_in(log.frames_after(2) or b"") == [b"three", b"four"]
    log.append(frame(b"fi", fin=False))  # a message in progress is replayed as far as it went
    assert messages_in(log.frames_after(4) or b"") == [b"fi..."]
    log.confirm(4)
    assert log.size == len(frame(b"fi", fin=False))
    log.confirm(99)  # a pong cannot confirm more than was written
    assert log.confirmed == 4


def test_an_overflow_stops_resumes_until_the_client_confirms_past_it() -> None:
    """Past its limit the log empties and refuses resumes, until the client confirms past what was dropped."""
    log = ReplayLog(limit=100)
    log.append(frame(b"a" * 40) + frame(b"b" * 40))
    assert log.resumable and log.size == 84
    log.append(frame(b"c" * 30, fin=False))  # over the limit: everything kept is dropped
    assert not log.resumable and log.size == 0 and log.frames_after(0) is None
    log.append(frame(b"d", opcode=Opcode.CONTINUATION) + frame(b"e"))  # the rest of c, then e
    assert log.messages == 4 and log.frames_after(2) is None
    log.confirm(3)  # the client had everything the overflow dropped
    assert log.resumable and messages_in(log.frames_after(3) or b"") == [b"e"]
