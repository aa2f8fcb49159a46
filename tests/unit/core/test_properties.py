"""Property-based tests of the pure codecs: the frame scanner against a reference model, the upgrade handshake.

The scanner properties draw whole cases (a frame stream, the direction, the limits, the read
splits, maybe the point where the session starts closing) through the generators of
``tests/framegen.py`` and let ``check_scanner`` compare the real scanner with the model there.
Example counts are bounded for the default run (``WS_GATEWAY_PROPERTY_EXAMPLES`` raises them);
Hypothesis keeps failing examples under ``.fuzz-out/hypothesis`` (gitignored) and replays them first.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import string
from collections import Counter

import h11
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from gateway.core.handshake import (
    HandshakeError,
    UpgradeResponse,
    accept_key,
    build_upgrade_request,
    check_accept,
    new_key,
    parse_upgrade_response,
)
from gateway.core.scanner import FrameScanner
from tests.framegen import (
    BINARY,
    PING,
    TEXT,
    Case,
    CheckingSink,
    FrameSpec,
    RandomChoices,
    check_scanner,
    draw_case,
    draw_cuts,
    draw_limits,
    encode,
    reference_decode,
)
from tests.support import ROOT

EXAMPLES = int(os.environ.get("WS_GATEWAY_PROPERTY_EXAMPLES", "300"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a shared 2-core machine: time per example varies too much for a deadline
    database=DirectoryBasedExampleDatabase(str(ROOT / ".fuzz-out" / "hypothesis")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
FEWER = settings(PROPERTY, max_examples=max(10, EXAMPLES // 5))


class DrawChoices:
    """The generators' decisions drawn from Hypothesis, so failing cases shrink."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def binary(self, size: int) -> bytes:
        if size <= 64:
            return self.data.draw(st.binary(min_size=size, max_size=size))
        return random.Random(self.data.draw(st.integers(0, 2**32 - 1))).randbytes(size)


def checked(case: Case) -> None:
    """Run the case through the scanner and the model, and label it for the statistics."""
    note(f"case: client={case.client} max_message={case.max_message} max_frame={case.max_frame} "
         f"cuts={case.cuts} discard_at={case.discard_at} stream={case.stream[:200]!r}")
    exp = check_scanner(case)
    end = exp.end
    event(f"ends with {end[0]} {end[1]}" if end else "no end")
    if len(exp.violations) == 2:
        event("violation, then a final one while closing")
    if exp.violations and any(e[0] == "close" for e in exp.events):
        event("violation, then the peer's close")


# --- the frame scanner against the model ----------------------------------------------------
@PROPERTY
@given(st.data())
def test_valid_streams_deliver_every_message_and_control_frame(data: st.DataObject) -> None:
    """Valid streams in any split: messages byte-exact, control frames in order; refused only over the size limit."""
    case = draw_case(DrawChoices(data), broken=False)
    checked(case)
    assert not reference_decode(case.stream, client=case.client, max_message=1 << 62, max_frame=1).violations


@FEWER
@given(st.data())
def test_large_frames_around_the_64_bit_length_form(data: st.DataObject) -> None:
    """Messages of 65535-70000 bytes (16- and 64-bit length forms), fragmented for the limit, relay as modelled."""
    checked(draw_case(DrawChoices(data), broken=data.draw(st.booleans()), large=True))


@PROPERTY
@given(st.data())
def test_broken_streams_are_refused_once_with_the_model_code(data: st.DataObject) -> None:
    """Mutated streams: the model's violation (1002/1007/1009) once, nothing forwarded after it, a later close read."""
    checked(draw_case(DrawChoices(data), broken=True))


@PROPERTY
@given(st.data())
def test_discard_from_any_read_boundary(data: st.DataObject) -> None:
    """When the session begins closing at any read boundary, no data goes out after; control frames are still read."""
    checked(draw_case(DrawChoices(data), broken=data.draw(st.booleans()), discard=True))


@PROPERTY
@given(client=st.booleans(), head=st.binary(min_size=0, max_size=14), rest=st.binary(max_size=300), data=st.data())
def test_arbitrary_bytes(client: bool, head: bytes, rest: bytes, data: st.DataObject) -> None:
    """Any bytes at all, after a valid frame or not: the scanner raises nothing and agrees with the model."""
    ch = DrawChoices(data)
    prefix = encode([FrameSpec(TEXT, b"ok", masked=client, key=b"\x01\x02\x03\x04")]) if ch.integer(0, 1) else b""
    stream = prefix + head + rest
    max_message, max_frame = draw_limits(ch, large=False)
    checked(Case(stream, client, max_message, max_frame, draw_cuts(ch, len(stream))))


def test_generators_reach_every_rule() -> None:
    """The generators produce every outcome the properties are about (so a green run means something)."""
    seen: Counter[str] = Counter()
    for seed in range(1500):
        ch = RandomChoices(seed)
        exp = check_scanner(draw_case(ch, broken=seed % 2 == 1, large=seed % 10 == 0, discard=seed % 3 == 0))
        violations = exp.violations
        seen.update(f"violation {e[1]} final={e[2]}" for e in violations)
        seen.update(str(e[0]) for e in exp.events)
        seen["violation then close"] += bool(violations and not violations[0][2] and exp.events[-1][0] == "close")
        seen["two violations"] += len(violations) == 2
        seen["unfinished message"] += exp.partial is not None
        seen["fragmented"] += exp.fragmented > 0
        seen["discarded"] += exp.discarded > 0
        seen["large"] += any(len(p) >= 65536 for _, p in exp.messages)
    wanted = ["violation 1002 final=False", "violation 1002 final=True", "violation 1007 final=True",
              "violation 1009 final=False", "ping", "pong", "close", "violation then close", "two violations",
              "unfinished message", "fragmented", "discarded", "large"]
    assert all(seen[name] >= 5 for name in wanted), {name: seen[name] for name in wanted}


@pytest.mark.parametrize(
    ("stream", "client", "messages"),
    [
        (bytes.fromhex("810548656c6c6f"), False, [(TEXT, b"Hello")]),
        (bytes.fromhex("818537fa213d7f9f4d5158"), True, [(TEXT, b"Hello")]),
        (bytes.fromhex("010348656c80026c6f"), False, [(TEXT, b"Hello")]),
        (bytes.fromhex("890548656c6c6f") + bytes.fromhex("810548656c6c6f"), False, [(TEXT, b"Hello")]),
        (bytes.fromhex("827e0100") + bytes(256), False, [(BINARY, bytes(256))]),
        (bytes.fromhex("827f0000000000010000") + bytes(65536), False, [(BINARY, bytes(65536))]),
    ],
    ids=["unmasked-text", "masked-text", "fragmented", "ping-then-text", "256-bytes", "64KiB"],
)
def test_model_reads_the_rfc_examples(stream: bytes, client: bool, messages: list[tuple[int, bytes]]) -> None:
    """The model decodes RFC 6455 section 5.7's example frames as the RFC says (the oracle is pinned too)."""
    exp = reference_decode(stream, client=client, max_message=1 << 20, max_frame=1 << 20)
    assert exp.messages == messages
    assert [e[0] for e in exp.events] == (["ping"] if stream[0] == 0x89 else [])
    assert exp.mode == "relay"
    assert reference_decode(stream, client=not client, max_message=1 << 20, max_frame=1 << 20).violations == [
        ("violation", 1002, False)], "the wrong mask bit is a protocol error"


def test_model_refuses_what_the_rfc_forbids() -> None:
    """The model's refusals: too-big message 1009, reason not UTF-8 1007 (final), bad close code 1002 (final)."""
    def decode(specs: list[FrameSpec], max_message: int = 100) -> list[tuple[object, ...]]:
        return reference_decode(encode(specs), client=True, max_message=max_message, max_frame=10).events

    big = FrameSpec(BINARY, bytes(101))
    assert decode([big]) == [("violation", 1009, False)]
    assert decode([big, FrameSpec(0x8, b"\x03\xe8")]) == [("violation", 1009, False), ("close", 1000, "")]
    assert decode([FrameSpec(0x8, b"\x03\xe8\xff")]) == [("violation", 1007, True)]
    assert decode([FrameSpec(0x8, b"\x03\xed")]) == [("violation", 1002, True)]
    assert decode([FrameSpec(PING, b"x", fin=False), FrameSpec(0x8, b"")]) == [("violation", 1002, False),
                                                                              ("close", 1005, "")]


@pytest.mark.parametrize("header", [bytes((0x82, 0x7E, 0x01, 0x00)), bytes((0x01, 0x05))],
                         ids=["256-byte-frame", "non-final-5-bytes"])
def test_in_message_only_once_the_destination_has_part_of_it(header: bytes) -> None:
    """A frame header alone gives the destination nothing, so in_message stays False until a byte is forwarded."""
    sink = CheckingSink(client=False, max_frame=1 << 20)
    scanner = FrameScanner(sink, expect_masked=False, max_message_size=1 << 20, max_frame_size=1 << 20)
    scanner.feed(header)
    assert sink.frames == [], "nothing of the message was forwarded"
    assert not scanner.in_message


# --- the upgrade handshake codec ------------------------------------------------------------
TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=20)
FIELD_CHARS = st.sampled_from([chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0xA0, 0x100)])
FIELD_VALUE = st.text(st.one_of(FIELD_CHARS, st.just(" ")), max_size=40).map(str.strip)
HEADERS = st.lists(st.tuples(TOKEN.filter(lambda n: n.lower() not in {
    "host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version", "content-length",
    "transfer-encoding"}), FIELD_VALUE), max_size=8)
TARGET = st.builds(lambda p, q: "/" + p + ("?" + q if q else ""),
                   st.text(string.ascii_letters + string.digits + "-._~%/", max_size=30),
                   st.text(string.ascii_letters + string.digits + "=&%-", max_size=20))


@PROPERTY
@given(host=st.from_regex(r"\A[a-z0-9.-]{1,20}(:[0-9]{1,5})?\Z"), target=TARGET, headers=HEADERS)
def test_upgrade_request_parses_as_http_with_the_given_headers(
    host: str, target: str, headers: list[tuple[str, str]]
) -> None:
    """build_upgrade_request's bytes parse (h11) as GET target HTTP/1.1: the upgrade headers, then ours, in order."""
    key = new_key()
    raw = build_upgrade_request(host, target, key, headers)
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(raw)
    request = parser.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method, request.target, request.http_version) == (b"GET", target.encode(), b"1.1")
    got = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw_items()]
    assert got == [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
                   ("Sec-WebSocket-Version", "13"), *headers]
    assert isinstance(parser.next_event(), h11.EndOfMessage), "the request has no body and nothing after it"


def test_accept_key_matches_rfc_6455_example() -> None:
    """accept_key gives RFC 6455 section 1.3's answer for its example key."""
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@PROPERTY
@given(st.binary(min_size=16, max_size=16))
def test_accept_key_is_sha1_of_key_and_guid(nonce: bytes) -> None:
    """For any key, accept_key is base64(SHA-1(key + the RFC's GUID)) (RFC 6455 4.2.2 step 5.4)."""
    key = base64.b64encode(nonce).decode()
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()  # noqa: S324
    assert accept_key(key) == base64.b64encode(digest).decode()


def test_new_key_is_a_fresh_16_byte_nonce() -> None:
    """new_key is base64 of 16 bytes (RFC 6455 4.1) and not repeated."""
    keys = {new_key() for _ in range(200)}
    assert len(keys) == 200
    assert all(len(base64.b64decode(key, validate=True)) == 16 for key in keys)


VALID_HEAD = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")


@st.composite
def near_valid_heads(draw: st.DrawFn) -> bytes:
    """A valid 101 head with a few bytes replaced, inserted or deleted."""
    head = bytearray(VALID_HEAD)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(head)))
        kind = draw(st.integers(0, 2))
        if kind == 0 and at < len(head):
            head[at] = draw(st.integers(0, 255))
        elif kind == 1:
            head[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del head[at:at + draw(st.integers(1, 4))]
    return bytes(head)


@PROPERTY
@given(st.one_of(st.binary(max_size=200), near_valid_heads()))
def test_parse_upgrade_response_raises_only_handshake_error(head: bytes) -> None:
    """On any bytes, parse_upgrade_response returns a response or raises HandshakeError, nothing else."""
    try:
        response = parse_upgrade_response(head)
    except HandshakeError as exc:
        assert str(exc), "a HandshakeError says what was wrong"
        return
    assert isinstance(response.status, int) and all(isinstance(h, tuple) for h in response.headers)
    with contextlib.suppress(HandshakeError):
        assert check_accept(response, "dGhlIHNhbXBsZSBub25jZQ==", ["chat"]) in (None, "chat")


@pytest.mark.parametrize("head", [
    pytest.param(b"HTTP/1.1 \xb2 x", id="superscript-2"),
    pytest.param(b"HTTP/1.1 1\xb9\xb3 Switching Protocols\r\nUpgrade: websocket", id="superscript-13"),
    pytest.param(b"HTTP/1.1 " + b"1" * 4301 + b" x", id="4301-digits"),
    pytest.param(b"HTTP/1.1 1234567 Nope", id="7-digits"),
    pytest.param(b"HTTP/1.1 99 Nope", id="2-digits"),
])
def test_status_code_not_three_ascii_digits_is_a_handshake_error(head: bytes) -> None:
    """A status code that is not three ASCII digits is refused with HandshakeError like any malformed status line."""
    with pytest.raises(HandshakeError):
        parse_upgrade_response(head)


@PROPERTY
@given(status=st.integers(100, 999), reason=st.text(FIELD_CHARS, max_size=20), headers=HEADERS)
def test_parse_upgrade_response_round_trip(status: int, reason: str, headers: list[tuple[str, str]]) -> None:
    """A well-formed head parses to its status, reason and headers (values stripped, order and case kept)."""
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    response = parse_upgrade_response("\r\n".join(lines).encode("latin-1"))
    assert (response.status, response.reason, response.headers) == (status, reason, headers)


def accepted(key: str, **extra: str) -> UpgradeResponse:
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_key(key))]
    return UpgradeResponse(101, "Switching Protocols", headers + [(k.replace("_", "-"), v) for k, v in extra.items()])


@PROPERTY
@given(key=st.binary(min_size=16, max_size=16).map(lambda b: base64.b64encode(b).decode()),
       other=st.binary(min_size=16, max_size=16).map(lambda b: base64.b64encode(b).decode()),
       offered=st.lists(TOKEN, max_size=4, unique=True), chosen=TOKEN)
def test_check_accept_refuses_wrong_keys_and_protocols(key: str, other: str, offered: list[str], chosen: str) -> None:
    """check_accept takes the right key and an offered protocol; wrong key, other protocol, extension: refused."""
    assert check_accept(accepted(key), key, offered) is None
    if other != key:
        with pytest.raises(HandshakeError, match="Sec-WebSocket-Accept"):
            check_accept(accepted(key), other, offered)
    if chosen in offered:
        assert check_accept(accepted(key, Sec_WebSocket_Protocol=chosen), key, offered) == chosen
    else:
        with pytest.raises(HandshakeError, match="subprotocol"):
            check_accept(accepted(key, Sec_WebSocket_Protocol=chosen), key, offered)
    with pytest.raises(HandshakeError, match="extension"):
        check_accept(accepted(key, Sec_WebSocket_Extensions="permessage-deflate"), key, offered)
    for name in ("Upgrade", "Connection", "Sec-WebSocket-Accept"):
        stripped = UpgradeResponse(101, "", [h for h in accepted(key).headers if h[0] != name])
        with pytest.raises(HandshakeError):
            check_accept(stripped, key, offered)
