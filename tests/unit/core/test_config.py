"""Configuration: defaults match the documented file, every problem is reported at once, CLI exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.core.config import ConfigError, effective_config, load_config, unknown_environment
from tests.support import ROOT, scaled

DOCUMENTED = ROOT / "config" / "gateway.yaml"


def test_documented_file_states_every_default() -> None:
    """config/gateway.yaml lists every key with exactly the built-in default."""
    documented = yaml.safe_load(DOCUMENTED.read_text(encoding="utf-8"))
    defaults = effective_config(load_config(environ={}))
    assert effective_config(load_config(str(DOCUMENTED), environ={})) == defaults
    assert documented.keys() == defaults.keys()
    for section, values in defaults.items():
        if isinstance(values, dict):
            assert documented[section].keys() == values.keys(), section


def test_every_problem_in_one_error(tmp_path: Path) -> None:
    """Unknown keys, bad values and inconsistent pairs are all named in a single error."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "listen: nowhere\nclient:\n  ping_interval: 40s\n  max_frame_size: huge\n  pingg: 1\n"
        "proxy:\n  idle_timeout: 30s\n  trusted_proxies: [not-a-cidr]\nupstream:\n  url: http://x\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ={})
    text = str(info.value)
    for expected in ("listen: 'nowhere'", "client.max_frame_size: 'huge'", "client.pingg: unknown key",
                     "proxy.trusted_proxies", "upstream.url", "must be below proxy.idle_timeout"):
        assert expected in text, expected
    assert len(info.value.problems) == 6


def test_client_ping_must_be_below_proxy_idle_timeout() -> None:
    """A ping interval not below the proxy's idle timeout is refused; below it is fine."""
    with pytest.raises(ConfigError, match=r"client\.ping_interval"):
        load_config(overrides={"proxy": {"idle_timeout": "20s"}}, environ={})
    config = load_config(overrides={"proxy": {"idle_timeout": "60s"}}, environ={})
    assert config.proxy.idle_timeout == 60


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    """GATEWAY_* beats the file; flags beat GATEWAY_*."""
    path = tmp_path / "c.yaml"
    path.write_text("client:\n  ping_interval: 30s\nlisten: 127.0.0.1:1000\n")
    env = {"GATEWAY_CLIENT_PING_INTERVAL": "15s", "GATEWAY_LISTEN": "127.0.0.1:2000",
           "GATEWAY_PROXY_TRUSTED_PROXIES": "[10.0.0.0/8]"}
    config = load_config(str(path), environ=env)
    assert config.client.ping_interval == 15
    assert config.listen == "127.0.0.1:2000"
    assert config.proxy.trusted_proxies == ("10.0.0.0/8",)
    config = load_config(str(path), environ=env, overrides={"listen": "127.0.0.1:3000"})
    assert config.listen == "127.0.0.1:3000"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=scaled(60), check=False)


def test_check_config_prints_effective_config() -> None:
    """`ws-gateway check-config FILE` exits 0 and prints the effective configuration."""
    result = run_cli("check-config", str(DOCUMENTED))
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["client"]["ping_interval"] == "20s"
    assert printed["upstream"]["url"] == "ws://127.0.0.1:8000"
    assert "# Check: upstream.max_message_size (16MiB) should be your app's own limit" in result.stdout


def test_bad_config_exits_2_naming_every_problem(tmp_path: Path) -> None:
    """A bad file makes both check-config and the server exit 2 with every problem listed."""
    path = tmp_path / "bad.yaml"
    path.write_text("max_sessions: zero\ndrain:\n  timeout: 1s\n")
    for args in (("check-config", str(path)), ("--config", str(path))):
        result = run_cli(*args)
        assert result.returncode == 2
        assert "max_sessions: 'zero'" in result.stderr
        assert "drain.timeout" in result.stderr
    result = run_cli("--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "cannot read" in result.stderr
    result = run_cli("--listen", "127.0.0.1:0")
    assert result.returncode == 2 and "listen" in result.stderr


def test_notice_templates_checked() -> None:
    """A notice template with an unknown field is refused, naming the allowed ones."""
    with pytest.raises(ConfigError, match="outage_ms"):
        load_config(overrides={"reconnect": {"notify_resume": "back after {seconds}s"}}, environ={})
    config = load_config(overrides={"reconnect": {"notify_resume": "back after {outage_ms} ms"}}, environ={})
    assert config.reconnect.notify_resume == "back after {outage_ms} ms"


def test_every_list_key_takes_one_syntax_in_the_environment() -> None:
    """``a,b`` (or a YAML list, or one value) works for every list key: URLs, codes, origins, proxies."""
    env = {"GATEWAY_UPSTREAM_URL": "ws://127.0.0.1:8001,ws://127.0.0.1:8002",
           "GATEWAY_RECONNECT_CODES": "1001,1006",
           "GATEWAY_CLIENT_ALLOWED_ORIGINS": "https://a.example, https://b.example",
           "GATEWAY_PROXY_TRUSTED_PROXIES": "10.0.0.0/8,192.168.0.0/16"}
    config = load_config(environ=env)
    assert config.upstream.url == ("ws://127.0.0.1:8001", "ws://127.0.0.1:8002")
    assert config.reconnect.codes == frozenset({1001, 1006})
    assert config.client.allowed_origins == ("https://a.example", "https://b.example")
    assert config.proxy.trusted_proxies == ("10.0.0.0/8", "192.168.0.0/16")
    assert load_config(environ={"GATEWAY_RECONNECT_CODES": "[1012]"}).reconnect.codes == frozenset({1012})
    assert load_config(environ={"GATEWAY_RECONNECT_CODES": "1012"}).reconnect.codes == frozenset({1012})


def test_unknown_variables_are_named_with_the_closest_key_and_service_links_ignored() -> None:
    """A misspelt GATEWAY_* variable gets a warning naming the key it was meant to be; Kubernetes' do not."""
    env = {"GATEWAY_CLIENT_PINGINTERVAL": "5s", "GATEWAY_PORT": "tcp://10.0.0.1:80",
           "GATEWAY_PORT_80_TCP": "tcp://10.0.0.1:80", "GATEWAY_PORT_80_TCP_ADDR": "10.0.0.1",
           "GATEWAY_PORT_80_TCP_PORT": "80", "GATEWAY_PORT_80_TCP_PROTO": "tcp", "GATEWAY_SERVICE_HOST": "10.0.0.1",
           "GATEWAY_SERVICE_PORT": "80", "GATEWAY_SERVICE_PORT_HTTP": "80", "OTHER": "x"}
    warnings = unknown_environment(env)
    assert warnings == ["environment variable GATEWAY_CLIENT_PINGINTERVAL is not a ws-gateway setting and is "
                        "ignored; did you mean GATEWAY_CLIENT_PING_INTERVAL (client.ping_interval)?"]
    assert load_config(environ=env).client.ping_interval == 20, "service links and typos never stop a start"


def test_help_names_both_forms_of_the_command() -> None:
    """--help's usage line shows the server flags and check-config."""
    usage = run_cli("--help").stdout
    assert "ws-gateway check-config FILE" in usage.split("\n\n")[0]
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(DOCUMENTED)], capture_output=True,
                            text=True, cwd=ROOT, timeout=scaled(60), check=False,
                            env={**os.environ, "GATEWAY_UPSTREAM_URLS": "ws://x:1"})
    assert result.returncode == 0
    assert "GATEWAY_UPSTREAM_URLS is not a ws-gateway setting" in result.stderr
    assert "did you mean GATEWAY_UPSTREAM_URL" in result.stderr


@pytest.mark.parametrize("level", ["0", "10", "fast"])
def test_compression_level_outside_1_to_9_is_refused(level: str) -> None:
    """client.compression.level is zlib's 1-9 (from the environment too); anything else is named in the error."""
    with pytest.raises(ConfigError, match=r"client\.compression\.level"):
        load_config(environ={"GATEWAY_CLIENT_COMPRESSION_LEVEL": level})
    assert load_config(environ={"GATEWAY_CLIENT_COMPRESSION_LEVEL": "1"}).client.compression.level == 1
