"""Frame streams for fuzzing the relay, and an independent reference decoder of them (RFC 6455 section 5).

Shared by the property tests (``tests/unit/core/test_properties.py``), the atheris target
(``fuzz/fuzz_scanner.py``) and the live raw-socket test (``tests/integration/test_fuzz_live.py``):

* :class:`Choices` is where a generator's decisions come from: Hypothesis (shrinkable), a seeded
  :class:`random.Random` (:class:`RandomChoices`: the live test, the fuzz corpus seeds) or atheris.
* :func:`valid_frames` and :func:`mutate` build streams as lists of :class:`FrameSpec`: text and
  binary messages, fragmented or not, sizes around the 125/126/65535/65536 length forms,
  interleaved pings and pongs, a close; each mutation breaks one rule (or none, by luck).
* :func:`reference_decode` is the model. It is written from RFC 6455 and the relay policy stated in
  the scanner's module docstring, not from the scanner's code: it reads the whole stream at once
  and says which messages a correct relay delivers, which control frames it reports, where the
  stream breaks a rule and with which close code.
* :func:`check_scanner` feeds a stream to a real :class:`FrameScanner` in the given reads and
  compares everything its sink got with the model: the one oracle all three harnesses use.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from gateway.core.scanner import FrameScanner, ScanMode

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RESERVED_OPCODES: Final = (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)
RELAY, DISCARD, STOPPED = "relay", "discard", "stopped"

VALID_CLOSE_CODES: Final = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999)
INVALID_CLOSE_CODES: Final = (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2999, 5000, 65535)
BAD_UTF8: Final = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"ok\x80")
SMALL_SIZES: Final = (0, 1, 2, 3, 4, 5, 124, 125, 126, 127, 128, 300, 1000, 4096)
LARGE_SIZES: Final = (65535, 65536, 65537, 70000)


# --- where decisions come from --------------------------------------------------------------
class Choices(Protocol):
    """The source of a generator's decisions."""

    def integer(self, low: int, high: int) -> int:
        """An integer in ``[low, high]``; a shrinking source prefers ``low``."""

    def binary(self, size: int) -> bytes:
        """Exactly ``size`` bytes."""


class RandomChoices:
    """Decisions from a seeded :class:`random.Random`: the same seed gives the same stream."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def binary(self, size: int) -> bytes:
        return self.rng.randbytes(size)


def chance(ch: Choices, percent: int) -> bool:
    """True ``percent`` times in 100 (a shrinking source prefers False)."""
    return ch.integer(0, 99) >= 100 - percent


def pick(ch: Choices, items: Sequence[int]) -> int:
    """One of ``items`` (a shrinking source prefers the first)."""
    return items[ch.integer(0, len(items) - 1)]


# --- encoding -----------------------------------------------------------------------------
def mask(key: bytes, payload: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``key`` (RFC 6455 5.3); the same call unmasks; no key: as is."""
    if not key or not payload:
        return payload
    n = len(payload)
    return (int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")


@dataclass(frozen=True, slots=True)
class FrameSpec:
    """One frame to put on the wire, possibly broken on purpose."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    masked: bool = True
    key: bytes = b"\x00\x00\x00\x00"
    rsv: int = 0
    length_form: int = 0
    """0: the shortest length form; 16 or 64: that form even when it is not minimal."""
    declared: int | None = None
    """A payload length to write in the header instead of the real one."""

    def encode(self) -> bytes:
        length = len(self.payload) if self.declared is None else self.declared
        form = self.length_form or (7 if length < 126 else 16 if length < 0x10000 else 64)
        first = (0x80 if self.fin else 0) | (self.rsv & 7) << 4 | (self.opcode & 0x0F)
        bit = 0x80 if self.masked else 0
        if form == 7:
            header = bytes((first, bit | length))
        elif form == 16:
            header = bytes((first, bit | 126)) + (length & 0xFFFF).to_bytes(2, "big")
        else:
            header = bytes((first, bit | 127)) + (length & (1 << 64) - 1).to_bytes(8, "big")
        if not self.masked:
            return header + self.payload
        return header + self.key + mask(self.key, self.payload)


def encode(specs: Sequence[FrameSpec]) -> bytes:
    """The byte stream of ``specs``."""
    return b"".join(spec.encode() for spec in specs)


# --- generators ---------------------------------------------------------------------------
_ASCII: Final = bytes(range(128)) * 2


def text_bytes(ch: Choices, size: int) -> bytes:
    """Exactly ``size`` bytes of valid UTF-8 (mostly ASCII, with multi-byte characters now and then)."""
    text = ch.binary(size).translate(_ASCII)
    for _ in range(ch.integer(0, 2)):
        wide = "\u00e9\u20ac\U0001f600"[ch.integer(0, 2)].encode("utf-8")
        if size >= len(wide):
            at = ch.integer(0, size - len(wide))
            if text[at:at + len(wide)].isascii():  # never over part of another wide character
                text = text[:at] + wide + text[at + len(wide):]
    return text


def payload_size(ch: Choices, large: bool) -> int:
    """A payload size: small at random, or one of the length-form edges (65535/65536 when ``large``)."""
    kind = ch.integer(0, 9)
    if kind < 5:
        return ch.integer(0, 200)
    if kind < 9 or not large:
        return pick(ch, SMALL_SIZES)
    return pick(ch, LARGE_SIZES)


def control_frame(ch: Choices, client: bool) -> FrameSpec:
    """A valid ping or pong (payload up to 125 bytes)."""
    opcode = PING if ch.integer(0, 1) == 0 else PONG
    return FrameSpec(opcode, ch.binary(ch.integer(0, 125)), masked=client, key=ch.binary(4))


def close_frame(ch: Choices, client: bool) -> FrameSpec:
    """A valid close: empty, a code, or a code and a UTF-8 reason (RFC 6455 5.5.1)."""
    kind = ch.integer(0, 2)
    if kind == 0:
        body = b""
    else:
        code = pick(ch, VALID_CLOSE_CODES) if ch.integer(0, 3) else ch.integer(3000, 4999)
        body = code.to_bytes(2, "big") + (text_bytes(ch, ch.integer(0, 123)) if kind == 2 else b"")
    return FrameSpec(CLOSE, body, masked=client, key=ch.binary(4))


def message_frames(ch: Choices, client: bool, large: bool) -> list[FrameSpec]:
    """One text (UTF-8) or binary message, in 1 to 4 fragments, pings and pongs maybe between them."""
    opcode = TEXT if ch.integer(0, 1) == 0 else BINARY
    size = payload_size(ch, large)
    payload = text_bytes(ch, size) if opcode == TEXT else ch.binary(size)
    cuts = sorted(ch.integer(0, size) for _ in range(ch.integer(0, 3)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
    frames: list[FrameSpec] = []
    for i, piece in enumerate(pieces):
        if i and chance(ch, 20):
            frames.append(control_frame(ch, client))
        frames.append(FrameSpec(opcode if i == 0 else CONTINUATION, piece, fin=i == len(pieces) - 1,
                                masked=client, key=ch.binary(4)))
    return frames


def valid_frames(ch: Choices, *, client: bool, large: bool = False, close: int = 50) -> list[FrameSpec]:
    """A stream that breaks no rule: messages, pings and pongs, and a close ``close`` times in 100."""
    frames: list[FrameSpec] = []
    for _ in range(ch.integer(0, 6)):
        if ch.integer(0, 4) == 0:
            frames.append(control_frame(ch, client))
        else:
            frames += message_frames(ch, client, large)
    if chance(ch, close):
        frames.append(close_frame(ch, client))
    return frames


def _frame_at(ch: Choices, specs: list[FrameSpec], at: int, client: bool) -> int:
    """Index of an existing frame to break (one is added if the stream is empty)."""
    if not specs:
        specs.append(FrameSpec(TEXT, ch.binary(ch.integer(0, 10)), masked=client, key=ch.binary(4)))
    return min(at, len(specs) - 1)


def _change(**changes: object) -> Callable[[Choices, list[FrameSpec], int, bool], None]:
    def apply(ch: Choices, specs: list[FrameSpec], at: int, client: bool) -> None:
        i = _frame_at(ch, specs, at, client)
        values = {name: make(ch, specs[i]) if callable(make) else make for name, make in changes.items()}
        specs[i] = replace(specs[i], **values)  # type: ignore[arg-type]

    return apply


def _insert(make: Callable[[Choices, bool], FrameSpec]) -> Callable[[Choices, list[FrameSpec], int, bool], None]:
    def apply(ch: Choices, specs: list[FrameSpec], at: int, client: bool) -> None:
        specs.insert(at, make(ch, client))

    return apply


def _bad_close(ch: Choices, client: bool) -> FrameSpec:
    kind = ch.integer(0, 2)
    if kind == 0:
        body = ch.binary(1)
    elif kind == 1:
        body = pick(ch, INVALID_CLOSE_CODES).to_bytes(2, "big") + text_bytes(ch, ch.integer(0, 10))
    else:
        body = pick(ch, VALID_CLOSE_CODES).to_bytes(2, "big") + BAD_UTF8[ch.integer(0, len(BAD_UTF8) - 1)]
    return FrameSpec(CLOSE, body, masked=client, key=ch.binary(4))


def _non_minimal_edge(ch: Choices, client: bool) -> FrameSpec:
    form = pick(ch, (16, 64))
    size = pick(ch, (125, 0, 1) if form == 16 else (65535, 0, 125))
    return FrameSpec(pick(ch, (TEXT, BINARY, PING)), ch.binary(size), masked=client, key=ch.binary(4), length_form=form)


def _drop(ch: Choices, specs: list[FrameSpec], at: int, client: bool) -> None:
    if specs:
        del specs[min(at, len(specs) - 1)]


def _duplicate(ch: Choices, specs: list[FrameSpec], at: int, client: bool) -> None:
    i = _frame_at(ch, specs, at, client)
    specs.insert(i, specs[i])


MUTATIONS: Final[dict[str, Callable[[Choices, list[FrameSpec], int, bool], None]]] = {
    "reserved bits": _change(rsv=lambda ch, s: ch.integer(1, 7)),
    "reserved opcode": _change(opcode=lambda ch, s: pick(ch, RESERVED_OPCODES)),
    "wrong mask bit": _change(masked=lambda ch, s: not s.masked),
    "non-minimal length": _change(length_form=lambda ch, s: 16 if len(s.payload) < 126 else 64),
    "64-bit length, top bit set": _change(length_form=64, declared=lambda ch, s: 1 << 63 | ch.integer(0, 1000)),
    "wrong length": _change(declared=lambda ch, s: max(0, len(s.payload) + ch.integer(-10, 10))),
    "huge length": _change(declared=lambda ch, s: pick(ch, (1 << 32, 1 << 62, (1 << 63) - 1)), length_form=64),
    "non-minimal length at an edge": _insert(_non_minimal_edge),
    "control over 125 bytes": _insert(lambda ch, c: FrameSpec(
        pick(ch, (PING, PONG, CLOSE)), ch.binary(pick(ch, (126, 127, 300))), masked=c, key=ch.binary(4))),
    "fragmented control": _insert(lambda ch, c: replace(control_frame(ch, c), fin=False)),
    "continuation without start": _insert(lambda ch, c: FrameSpec(CONTINUATION, ch.binary(ch.integer(0, 20)),
                                                                  fin=ch.integer(0, 1) == 1, masked=c,
                                                                  key=ch.binary(4))),
    "new message mid-message": _insert(lambda ch, c: FrameSpec(pick(ch, (TEXT, BINARY)), ch.binary(3), fin=False,
                                                               masked=c, key=ch.binary(4))),
    "bad close payload": _insert(_bad_close),
    "dropped frame": _drop,
    "duplicated frame": _duplicate,
}


def mutate(ch: Choices, specs: Sequence[FrameSpec], *, client: bool) -> list[FrameSpec]:
    """``specs`` with one or two mutations from :data:`MUTATIONS` applied at drawn places."""
    out = list(specs)
    names = list(MUTATIONS)
    for _ in range(ch.integer(1, 2)):
        MUTATIONS[names[ch.integer(0, len(names) - 1)]](ch, out, ch.integer(0, len(out)), client)
    return out


def damage(ch: Choices, stream: bytes) -> bytes:
    """Byte-level damage, sometimes: a truncation, a flipped byte or inserted garbage."""
    kind = ch.integer(0, 5)
    if not stream or kind >= 3:
        return stream
    at = ch.integer(0, len(stream) - 1)
    if kind == 0:
        return stream[:at]
    if kind == 1:
        return stream[:at] + bytes((stream[at] ^ ch.integer(1, 255),)) + stream[at + 1:]
    return stream[:at] + ch.binary(ch.integer(1, 8)) + stream[at:]


@dataclass(frozen=True, slots=True)
class Case:
    """One scanner run: a stream, the direction, the limits, where reads end, maybe a discard point."""

    stream: bytes
    client: bool
    max_message: int
    max_frame: int
    cuts: tuple[int, ...] = ()
    """Offsets where one read ends and the next begins."""
    discard_at: int | None = None
    """Offset (a read boundary) after which the sink calls ``discard_data()`` (the session closing)."""

    def reads(self) -> list[bytes]:
        bounds = sorted({c for c in self.cuts if 0 < c < len(self.stream)} | {len(self.stream)})
        return [self.stream[a:b] for a, b in zip([0, *bounds], bounds, strict=False) if b > a]


def draw_limits(ch: Choices, large: bool) -> tuple[int, int]:
    """``(max_message_size, max_frame_size)``: roomy, or tight enough to refuse and fragment."""
    max_message = pick(ch, (1 << 24, 1000, 125, 126, 65535, 65536, 1, 300))
    frames = (1 << 20, 125, 126, 1000, 65535, 65536) if large else (1 << 20, 125, 126, 1000, 1, 2, 7, 64)
    return max_message, pick(ch, frames)


def draw_cuts(ch: Choices, length: int) -> tuple[int, ...]:
    """Read boundaries: a few anywhere, and now and then a run of one-byte reads."""
    cuts = [ch.integer(0, length) for _ in range(ch.integer(0, 8))]
    if chance(ch, 30):
        start = ch.integer(0, length)
        cuts += range(start, min(length, start + ch.integer(1, 40)))
    return tuple(sorted(set(cuts)))


def draw_case(ch: Choices, *, broken: bool, large: bool = False, client: bool | None = None,
              discard: bool = False) -> Case:
    """A whole :class:`Case`: a valid stream, or (``broken``) a mutated and maybe damaged one."""
    direction = ch.integer(0, 1) == 0 if client is None else client
    specs = valid_frames(ch, client=direction, large=large)
    if broken:
        specs = mutate(ch, specs, client=direction)
        if chance(ch, 50):
            specs += valid_frames(ch, client=direction, close=70)
    stream = encode(specs)
    if broken:
        stream = damage(ch, stream)
    max_message, max_frame = draw_limits(ch, large)
    cuts = draw_cuts(ch, len(stream))
    discard_at = None
    if discard:
        points = [0, *cuts, len(stream)]
        discard_at = points[ch.integer(0, len(points) - 1)]
    return Case(stream, direction, max_message, max_frame, cuts, discard_at)


# --- the model ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Header:
    """A decoded frame header (RFC 6455 5.2)."""

    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length_field: int
    """The 7-bit length field: 0-125, or 126 / 127 for the extended forms."""
    length: int
    size: int
    key: bytes


def read_header(stream: bytes, pos: int) -> Header | None:
    """The header at ``pos``, or None when the stream ends inside it."""
    if len(stream) - pos < 2:
        return None
    b0, b1 = stream[pos], stream[pos + 1]
    field7 = b1 & 0x7F
    extended = 2 if field7 == 126 else 8 if field7 == 127 else 0
    masked = bool(b1 & 0x80)
    size = 2 + extended + (4 if masked else 0)
    if len(stream) - pos < size:
        return None
    length = int.from_bytes(stream[pos + 2:pos + 2 + extended], "big") if extended else field7
    key = stream[pos + 2 + extended:pos + size] if masked else b""
    return Header(bool(b0 & 0x80), b0 >> 4 & 7, b0 & 0x0F, masked, field7, length, size, key)


def is_valid_close_code(code: int) -> bool:
    """RFC 6455 7.4.1/7.4.2 and the IANA registry: 1000-1003, 1007-1014 and 3000-4999."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_event(payload: bytes) -> tuple[object, ...]:
    """What a close frame's body means (RFC 6455 5.5.1): a close, or a final violation."""
    if not payload:
        return ("close", 1005, "")
    if len(payload) == 1:
        return ("violation", 1002, True)
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        return ("violation", 1002, True)
    try:
        return ("close", code, payload[2:].decode("utf-8"))
    except UnicodeDecodeError:
        return ("violation", 1007, True)


def relay_rule(head: Header, *, client: bool, in_message: bool, message_size: int,
               max_message: int) -> tuple[int, bool] | None:
    """``(code, final)`` a relay must refuse ``head`` with while relaying, or None when it is fine.

    Final (nothing more can be read) when the frame is the peer's close, or when its length
    cannot be skipped (2^63 or more).
    """
    final = head.opcode == CLOSE or head.length >= 1 << 63
    broken = (
        head.rsv != 0  # 5.2: no extension was negotiated
        or head.masked != client  # 5.1: clients mask, servers do not
        or head.opcode in RESERVED_OPCODES  # 5.2
        or (head.length_field == 126 and head.length < 126)  # 5.2: the minimal number of bytes
        or (head.length_field == 127 and head.length < 0x10000)
        or head.length >= 1 << 63  # 5.2: the most significant bit must be 0
        or (head.opcode >= 0x8 and (not head.fin or head.length > 125))  # 5.5
        or (head.opcode == CONTINUATION and not in_message)  # 5.4
        or (head.opcode in (TEXT, BINARY) and in_message)  # 5.4: no interleaved messages
    )
    if broken:
        return 1002, final
    if head.opcode < 0x8:
        size = (message_size if head.opcode == CONTINUATION else 0) + head.length
        if size > max_message:
            return 1009, final
    return None


def closing_rule(head: Header) -> bool:
    """Whether a frame read while closing ends the reading: a length or control frame no one can skip."""
    return head.length >= 1 << 63 or (
        head.opcode >= 0x8 and (head.opcode not in (CLOSE, PING, PONG) or not head.fin or head.length > 125)
    )


@dataclass
class Expected:
    """What a correct relay does with a whole stream (the model's answer)."""

    messages: list[tuple[int, bytes]] = field(default_factory=list)
    """Whole messages delivered, in order, payloads unmasked."""
    partial: tuple[int, bytes] | None = None
    """An unfinished message: its opcode and every payload byte of it that was read."""
    partial_whole: int = -1
    """Payload bytes of ``partial`` in whole frames, which must have been delivered (-1: none may be)."""
    events: list[tuple[object, ...]] = field(default_factory=list)
    """("ping"|"pong", payload), ("close", code, reason), ("violation", code, final), in order."""
    before: list[tuple[int, int]] = field(default_factory=list)
    """For each event, the (least, most) data payload bytes delivered before it."""
    mode: str = RELAY
    tail: int = 0
    read_to: int = 0
    """Where reading stops: the end of what stopped it (a close, an unreadable frame's header), else the end."""
    """Bytes of a frame the stream ends inside (0: it ends on a frame boundary or was not read to the end)."""
    messages_count: int = 0
    payload_bytes: int = 0
    pending: tuple[int, int] = (0, 0)
    """(messages, payload bytes) of a frame cut before its end, which a relay may or may not have counted."""
    fragmented: int = 0
    discarded: int = 0

    @property
    def violations(self) -> list[tuple[object, ...]]:
        return [e for e in self.events if e[0] == "violation"]

    @property
    def end(self) -> tuple[object, ...] | None:
        """The event that ends the session from this peer's side: its close or the first violation."""
        return next((e for e in self.events if e[0] in ("close", "violation")), None)


def reference_decode(stream: bytes, *, client: bool, max_message: int, max_frame: int,
                     discard_at: int | None = None) -> Expected:
    """What a correct relay of ``stream`` delivers, reports and refuses.

    Args:
        stream: every byte the peer sent.
        client: frames come from a client (must be masked) rather than a server (must not be).
        max_message: largest message relayed; a longer one is refused with 1009.
        max_frame: largest frame the destination gets (only counted here: frames over it are
            delivered as fragments).
        discard_at: offset after which the relay stops delivering data (the session began to
            close); control frames are still read.
    """
    exp = Expected(read_to=len(stream))
    mode = RELAY
    pos, end = 0, len(stream)
    in_message = False
    opcode, size, split_counted = 0, 0, False
    parts: list[bytes] = []
    least = most = 0

    def report(event: tuple[object, ...]) -> None:
        exp.events.append(event)
        exp.before.append((least, most))

    while mode != STOPPED:
        if mode == RELAY and discard_at is not None and discard_at <= pos:
            mode = DISCARD
        head = read_header(stream, pos)
        if head is None:
            exp.tail = max(0, end - pos)
            break
        if mode == RELAY and discard_at is not None and discard_at < pos + head.size:
            mode = DISCARD  # the relay was told to discard with this header unread: closing rules
        body = pos + head.size
        frame_end = body + head.length
        whole = frame_end <= end
        if mode == DISCARD:
            if closing_rule(head):
                report(("violation", 1002, True))
                mode, exp.read_to = STOPPED, body
                break
            if not whole:
                exp.tail = end - pos
                break
            if head.opcode >= 0x8:
                payload = stream[body:frame_end]
                event = close_event(mask(head.key, payload)) if head.opcode == CLOSE else (
                    "ping" if head.opcode == PING else "pong", mask(head.key, payload))
                report(event)
                if head.opcode == CLOSE:
                    mode, exp.read_to = STOPPED, frame_end
            elif head.fin:
                exp.discarded += 1
            pos = frame_end
            continue
        problem = relay_rule(head, client=client, in_message=in_message, message_size=size, max_message=max_message)
        if problem is not None:
            report(("violation", *problem))
            mode = STOPPED if problem[1] else DISCARD
            if mode == STOPPED:
                exp.read_to = body
            if not whole and mode == DISCARD:
                exp.tail = end - pos
                break
            pos = frame_end  # the offending frame is skipped, not parsed
            continue
        cut = discard_at is not None and discard_at < frame_end
        if head.opcode >= 0x8:
            if not whole:
                exp.tail = end - pos
                break
            payload = mask(head.key, stream[body:frame_end])
            if head.opcode == CLOSE:
                report(close_event(payload))
                mode, exp.read_to = STOPPED, frame_end
            else:
                report(("ping" if head.opcode == PING else "pong", payload))
            if cut and mode == RELAY:
                mode = DISCARD
            pos = frame_end
            continue
        if head.opcode != CONTINUATION:
            opcode, parts, size, split_counted = head.opcode, [], 0, False
        size += head.length
        if head.length > max_frame and not split_counted:
            exp.fragmented += 1
            split_counted = True
        in_message = not head.fin
        seen_end = min(frame_end, end, discard_at if cut and discard_at is not None else end)
        payload = mask(head.key, stream[body:seen_end])
        if whole and not cut:
            parts.append(payload)
            exp.messages_count += head.fin
            exp.payload_bytes += head.length
            least += head.length
            most += head.length
            if head.fin:
                exp.messages.append((opcode, b"".join(parts)))
                parts = []
            pos = frame_end
            continue
        # The frame is cut, by the end of the stream or by the discard point: part of it may be out.
        exp.partial = (opcode, b"".join(parts) + payload)
        exp.partial_whole = sum(len(p) for p in parts) if parts else -1
        exp.pending = (int(head.fin), head.length)
        most = least + len(payload)
        if not cut:
            exp.tail = end - pos
            break
        mode = DISCARD
        if whole and head.fin:
            exp.discarded += 1
        pos = frame_end
    if exp.partial is None and in_message:
        exp.partial = (opcode, b"".join(parts))
        exp.partial_whole = len(exp.partial[1])
    if discard_at is not None and mode == RELAY:
        mode = DISCARD
    exp.mode = mode
    return exp


# --- running the real scanner against the model -----------------------------------------------
def parse_output(data: bytes, *, client: bool, max_frame: int) -> list[tuple[bool, int, bytes]]:
    """Decode one sink write; every frame must be whole, a data frame, minimally headed and within the limit."""
    frames = []
    pos = 0
    while pos < len(data):
        head = read_header(data, pos)
        assert head is not None, f"a write ends inside a frame header at {pos} of {len(data)}"
        assert pos + head.size + head.length <= len(data), "a write ends inside a frame"
        assert head.rsv == 0 and head.opcode in (CONTINUATION, TEXT, BINARY), f"forwarded {head}"
        assert head.masked == client, "forwarded frame with the wrong mask bit"
        minimal = head.length_field < 126 or (
            126 <= head.length < 0x10000 if head.length_field == 126 else head.length >= 0x10000)
        assert minimal, f"forwarded a header with a non-minimal length: {head}"
        assert head.length <= max_frame, f"forwarded a {head.length}-byte frame over max_frame_size {max_frame}"
        body = pos + head.size
        frames.append((head.fin, head.opcode, mask(head.key, data[body:body + head.length])))
        pos = body + head.length
    return frames


class CheckingSink:
    """A ScannerSink that checks each write as it comes and logs writes and events in order."""

    def __init__(self, *, client: bool, max_frame: int) -> None:
        self.client = client
        self.max_frame = max_frame
        self.frames: list[tuple[bool, int, bytes]] = []
        self.events: list[tuple[object, ...]] = []
        self.before: list[int] = []
        self.delivered = 0
        self.writes_after_end = 0
        self.events_after_stop = 0
        self.ended = False
        self.stopped = False
        self.inside = False
        """The destination has part of a message and not its end."""

    def forward(self, data: bytes) -> None:
        self._write(data)

    def forward_frame(self, header: bytes, payload: bytes) -> None:
        assert len(self._write(header + payload)) == 1, "forward_frame got more or less than one frame"

    def _write(self, data: bytes) -> list[tuple[bool, int, bytes]]:
        assert data, "empty write"
        if self.ended:
            self.writes_after_end += 1
        frames = parse_output(data, client=self.client, max_frame=self.max_frame)
        self.frames += frames
        self.delivered += sum(len(p) for _, _, p in frames)
        if frames:
            self.inside = not frames[-1][0]
        return frames

    def _event(self, event: tuple[object, ...]) -> None:
        if self.stopped:
            self.events_after_stop += 1
        self.events.append(event)
        self.before.append(self.delivered)

    def on_ping(self, payload: bytes) -> None:
        self._event(("ping", payload))

    def on_pong(self, payload: bytes) -> None:
        self._event(("pong", payload))

    def on_close(self, code: int, reason: str) -> None:
        self._event(("close", code, reason))
        self.ended = self.stopped = True

    def on_violation(self, code: int, reason: str, final: bool) -> None:
        assert isinstance(reason, str) and reason, "a violation without a reason"
        self._event(("violation", code, final))
        self.ended = True
        self.stopped = self.stopped or final

    def messages(self) -> tuple[list[tuple[int, bytes]], tuple[int, bytes] | None]:
        """The forwarded frames reassembled: whole messages and an unfinished one."""
        messages: list[tuple[int, bytes]] = []
        current: tuple[int, list[bytes]] | None = None
        for fin, opcode, payload in self.frames:
            if current is None:
                assert opcode in (TEXT, BINARY), "forwarded a continuation with no message started"
                current = (opcode, [])
            else:
                assert opcode == CONTINUATION, "forwarded a new message inside another"
            current[1].append(payload)
            if fin:
                messages.append((current[0], b"".join(current[1])))
                current = None
        return messages, None if current is None else (current[0], b"".join(current[1]))


def run_scanner(case: Case) -> tuple[FrameScanner, CheckingSink]:
    """Feed ``case`` to a real scanner read by read (calling ``discard_data`` at its point)."""
    sink = CheckingSink(client=case.client, max_frame=case.max_frame)
    scanner = FrameScanner(sink, expect_masked=case.client, max_message_size=case.max_message,
                           max_frame_size=case.max_frame)
    offset = 0
    if case.discard_at == 0:
        scanner.discard_data()
    for data in case.reads():
        scanner.feed(data)
        if sink.inside and scanner.mode is ScanMode.RELAY:
            # The session's reconnect decisions rest on this (a message cut mid-way cannot be resumed).
            assert scanner.in_message, "the destination is inside a message but in_message is False"
        offset += len(data)
        if case.discard_at == offset:
            scanner.discard_data()
    return scanner, sink


def check_scanner(case: Case) -> Expected:
    """Run ``case`` through the real scanner and assert it did what the model says; returns the model."""
    exp = reference_decode(case.stream, client=case.client, max_message=case.max_message,
                           max_frame=case.max_frame, discard_at=case.discard_at)
    scanner, sink = run_scanner(case)
    messages, partial = sink.messages()
    assert messages == exp.messages, _diff("messages", messages, exp.messages)
    if exp.partial is None:
        assert partial is None, f"forwarded the start of a message the model does not have: {_short(partial)}"
    elif partial is None:
        assert exp.partial_whole < 0, f"whole frames of an unfinished message were not forwarded: {_short(exp.partial)}"
    else:
        assert partial[0] == exp.partial[0], f"unfinished message opcode {partial[0]} != {exp.partial[0]}"
        assert exp.partial[1].startswith(partial[1]), "the forwarded start of a message is not what was sent"
        assert len(partial[1]) >= exp.partial_whole, "whole frames of an unfinished message were not forwarded"
    assert sink.events == exp.events, _diff("events", sink.events, exp.events)
    for got, (least, most), event in zip(sink.before, exp.before, exp.events, strict=True):
        assert least <= got <= most, f"{event[0]} reported after {got} payload bytes, expected {least}..{most}"
    assert sink.writes_after_end == 0, "data forwarded after a violation or a close"
    assert sink.events_after_stop == 0, "events reported after the scanner stopped"
    assert scanner.mode.name.lower() == exp.mode, f"mode {scanner.mode.name} != {exp.mode}"
    counted = (scanner.counts.messages - exp.messages_count, scanner.counts.payload_bytes - exp.payload_bytes)
    assert counted in ((0, 0), exp.pending), f"counters off by {counted} (may be {exp.pending})"
    counters = (scanner.counts.fragmented_messages, scanner.counts.discarded_messages)
    assert counters == (exp.fragmented, exp.discarded), f"(fragmented, discarded) {counters} != model's"
    return exp


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."


def _diff(what: str, got: Sequence[object], want: Sequence[object]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"{what} differ at {i}: got {_short(a)}, model {_short(b)}"
    extra = got[len(want)] if len(got) > len(want) else want[len(got)]
    return f"{what}: got {len(got)}, model {len(want)} (first extra: {_short(extra)})"
