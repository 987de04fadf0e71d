"""`ezthrottle serve` refuses to serve a development account beyond loopback, saying what to configure instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.cli import main


@pytest.fixture(autouse=True)
def no_node_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith(("EZTHROTTLE_", "FLY_")):
            monkeypatch.delenv(name)


def test_no_accounts_on_a_wildcard_address_refuses_to_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["serve", "--listen", "0.0.0.0:8080", "--data-dir", str(tmp_path / "data")]) == 2
    refusal = capsys.readouterr().err
    assert "no [[accounts]] are configured" in refusal and "server.listen = 0.0.0.0:8080" in refusal
    assert "EZTHROTTLE_ACCOUNTS=" in refusal and "EZTHROTTLE_SERVER_LISTEN" in refusal
    assert not (tmp_path / "data").exists()  # no development key was made


def test_a_protected_listener_beyond_loopback_counts_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "node.toml"
    path.write_text('[[protect]]\nlisten = "[::]:8443"\nupstream = "http://127.0.0.1:9000"\n')
    assert main(["serve", "--config", str(path), "--listen", "127.0.0.1:8080"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[1] == "  protect[0].listen = [::]:8443" and lines[2].startswith("Without accounts")  # only it
