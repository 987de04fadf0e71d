"""`[server]` settings beyond the listener itself: the log format, and which listen addresses stay on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, is_loopback_listen, load_config


def test_the_log_format_is_text_unless_json_is_asked_for(tmp_path: Path) -> None:
    assert load_config(None, env={}).server.log_format == "text"
    assert load_config(None, env={"EZTHROTTLE_SERVER_LOG_FORMAT": "json"}).server.log_format == "json"
    path = tmp_path / "node.toml"
    path.write_text('[server]\nlog_format = "json"\n')
    assert load_config(path, env={}).server.log_format == "json"


def test_an_unknown_log_format_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, env={"EZTHROTTLE_SERVER_LOG_FORMAT": "yaml"})
    assert (error.value.source, error.value.key) == ("EZTHROTTLE_SERVER_LOG_FORMAT", "server.log_format")
    assert "text, json" in error.value.problem


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:8080", True),
        ("127.0.0.2:0", True),
        ("[::1]:8080", True),
        ("localhost:8080", True),
        ("0.0.0.0:8080", False),
        ("[::]:8080", False),
        ("10.0.0.5:8080", False),
        ("node-a.internal:8080", False),  # a name may resolve anywhere
    ],
)
def test_loopback_listen_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback_listen(listen) is loopback
