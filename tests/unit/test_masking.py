"""gateway.masking: the inflater's mask is the core's XOR, only faster when aiohttp's helper is there."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.codec import mask_payload
from gateway.masking import FAST_MASK


@settings(max_examples=100, deadline=None)
@given(key=st.binary(min_size=4, max_size=4), payload=st.binary(max_size=3000))
def test_the_inflaters_mask_gives_the_same_bytes_as_the_cores(key: bytes, payload: bytes) -> None:
    """Any key and payload: the same bytes from both masks."""
    assert FAST_MASK(key, payload) == mask_payload(key, payload)
