"""Parsers of single configuration values (gateway/core/parsers.py): the value, or a ValueError saying what
is allowed (test_config.py checks that load_config names the key and collects every problem)."""

from __future__ import annotations

import pytest

from gateway.core.parsers import (
    as_list,
    boolean,
    close_codes,
    int_between,
    non_negative_int,
    origins,
    parse_host_port,
    positive_int,
    ws_url,
    ws_urls,
)


def test_every_list_key_takes_a_yaml_list_a_comma_list_or_one_value() -> None:
    """``a, b`` is split and stripped (empty items dropped), one number becomes a list, a list stays as it is."""
    assert as_list("a, b,,c") == ["a", "b", "c"]
    assert as_list(5) == [5] and as_list([1, 2]) == [1, 2]
    assert ws_urls("ws://a:1,ws://b:2") == ("ws://a:1", "ws://b:2")


def test_close_codes_are_whole_numbers_from_1000_to_4999() -> None:
    """Digits in a comma list are codes; a code out of range is named; booleans and words are refused."""
    assert close_codes("1001,1006") == frozenset({1001, 1006}) and close_codes([1012]) == frozenset({1012})
    with pytest.raises(ValueError, match=r"\[5000\] are not close codes \(1000-4999\)"):
        close_codes("1001,5000")
    for bad in ([True], "abc", [999.0]):
        with pytest.raises(ValueError, match="expected a list of close codes"):
            close_codes(bad)


def test_host_port_splits_ipv6_and_an_empty_host_means_every_interface() -> None:
    """``[::1]:80`` loses its brackets, ``:9000`` listens on 0.0.0.0; no port or a port outside 1-65535 is refused."""
    assert parse_host_port("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_host_port("[::1]:80") == ("::1", 80)
    assert parse_host_port(":9000") == ("0.0.0.0", 9000)  # noqa: S104 - what an empty host means
    for bad in ("localhost", "h:0", "h:65536", "h:http"):
        with pytest.raises(ValueError, match="expected HOST:PORT with a port from 1 to 65535"):
            parse_host_port(bad)


def test_upstream_urls_are_plain_ws_with_a_host_and_no_query() -> None:
    """ws://HOST[:PORT][/PREFIX] passes unchanged; wss, http, a query, no host or a port past 65535 are refused."""
    assert ws_url("ws://h:1/p") == "ws://h:1/p"
    for bad in ("wss://h", "http://h", "ws://h?q=1", "ws://"):
        with pytest.raises(ValueError, match="expected ws://HOST"):
            ws_url(bad)
    with pytest.raises(ValueError, match="the port must be from 1 to 65535"):
        ws_url("ws://h:99999")


def test_numbers_and_switches_refuse_the_other_type() -> None:
    """YAML's true is not the number 1, and "yes" is not true: each parser says what it expected."""
    with pytest.raises(ValueError, match="greater than 0"):
        positive_int(True)
    with pytest.raises(ValueError, match="0 or more"):
        non_negative_int(True)
    between = int_between(1, 9)
    assert between(9) == 9
    for bad in (True, 10, 0):
        with pytest.raises(ValueError, match="from 1 to 9"):
            between(bad)
    assert boolean(False) is False
    with pytest.raises(ValueError, match="expected true or false"):
        boolean("yes")


def test_origins_are_lower_cased_scheme_host_port() -> None:
    """A browser origin is compared lower-cased; one with a path is not an origin."""
    assert origins(["HTTPS://A.example:8443"]) == ("https://a.example:8443",)
    with pytest.raises(ValueError, match="is not scheme://host"):
        origins("https://a.example/path")
