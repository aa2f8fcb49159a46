"""permessage-deflate negotiation (gateway/core/compression.py, RFC 7692 section 7.1): the extension header
parsed, and the answer to each offer within the configuration."""

from __future__ import annotations

import pytest

from gateway.core.compression import ExtensionHeaderError, negotiate, parse_extensions
from gateway.core.config import CompressionConfig

ON = CompressionConfig(enabled=True, server_max_window_bits=12, client_max_window_bits=12, mem_level=5, min_size=0,
                       level=6)
"""Compression on, 12-bit windows both ways, no minimum size."""


def test_parse_extensions_reads_lists_params_and_quoted_values() -> None:
    """Sec-WebSocket-Extensions: a list of offers with parameters, quoted values unescaped; bad syntax raises."""
    assert parse_extensions('permessage-deflate; client_max_window_bits, x-foo;a="1\\2", ,bar') == [
        ("permessage-deflate", (("client_max_window_bits", None),)), ("x-foo", (("a", "12"),)), ("bar", ())]
    with pytest.raises(ExtensionHeaderError):
        parse_extensions("permessage-deflate; =1")


@pytest.mark.parametrize(("offer", "response"), [
    ("permessage-deflate; client_max_window_bits", "permessage-deflate; server_max_window_bits=12; "
                                                   "client_max_window_bits=12"),
    ("permessage-deflate", "permessage-deflate; server_max_window_bits=12"),
    ("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9",
     "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9"),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"),
    # a bad first offer is declined and the next one taken (RFC 7692 5)
    ("permessage-deflate; server_max_window_bits=16, permessage-deflate",
     "permessage-deflate; server_max_window_bits=12"),
])
def test_negotiation_answers_within_the_configuration(offer: str, response: str) -> None:
    """Each acceptable offer is answered with the window sizes it asked for, capped by the configuration."""
    agreement = negotiate(offer, ON)
    assert agreement is not None and agreement.response == response


@pytest.mark.parametrize("offer", ["x-webkit-deflate-frame", "permessage-deflate; foo",
                                   "permessage-deflate; server_max_window_bits",
                                   "permessage-deflate; server_max_window_bits=012",
                                   "permessage-deflate; client_no_context_takeover=1",
                                   "permessage-deflate; server_no_context_takeover; server_no_context_takeover"])
def test_unacceptable_offers_are_declined(offer: str) -> None:
    """Other extensions, unknown or repeated parameters and malformed window sizes: no agreement."""
    assert negotiate(offer, ON) is None


def test_compression_off_declines_without_reading_the_header() -> None:
    """With compression disabled nothing is agreed, even for a header that would not parse."""
    off = CompressionConfig(False, 12, 12, 5, 0, 6)
    assert negotiate("permessage-deflate", off) is None
    assert negotiate("permessage-deflate; =broken", off) is None
