"""The `ezthrottle` command as a user runs it: help, a bad config, and `serve` with no config at all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.e2e.support import free_port


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EZTHROTTLE_")}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=30, env=clean_env()
    )


def test_serve_help_explains_every_option():
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in (
        "--config",
        "--listen",
        "--data-dir",
        "--join",
        "--cluster-bind",
        "--insecure-cluster",
        "--log-level",
        "EZTHROTTLE_",
    ):
        assert option in result.stdout


def test_a_bad_config_fails_at_start_naming_file_key_and_problem(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[accounts]]\nid = "acme"\nkey = "ck_test_acme_0123456789"\nplan = "gold"\n')
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "accounts[0].plan" in result.stderr and "gold" in result.stderr
    assert "ck_test_acme" not in result.stderr


def test_a_cluster_without_keys_needs_the_insecure_flag(tmp_path: Path):
    result = run_cli("serve", "--cluster-bind", "127.0.0.1:0", "--join", "127.0.0.1:7946", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "cluster.keys" in result.stderr


async def test_serve_with_no_config_prints_a_working_dev_key(tmp_path: Path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**clean_env(), "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        output = ""
        with trio.fail_after(20):
            while "listening on" not in output:
                line = await trio.to_thread.run_sync(process.stdout.readline)
                assert line, output
                output += line.decode()
        key = re.search(r"key \(kept in .*\): (ck_dev_\S+)", output)
        assert key, output
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            job = {"url": "https://api.example.com/v1/ping", "retry_at": 4_000_000_000_000}
            created = await client.post("/api/v1/jobs", json=job, headers={"Authorization": f"Bearer {key[1]}"})
            assert created.status_code == 201, created.text
        assert key[1] in (tmp_path / "dev-account.key").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await trio.to_thread.run_sync(process.wait)
    assert process.returncode == 0


def test_the_command_line_loads_the_simulator_only_for_simulate():
    probe = "import sys, edge.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'simulations'))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"


def test_serve_does_not_load_the_registered_commands():
    probe = (
        "import sys, contextlib, io, edge.cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    edge.cli.main(['serve', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'simulations'))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"


def test_help_lists_the_commands_registered_as_entry_points():
    """`simulate` reaches edge only through the `ezthrottle.commands` entry points (pyproject.toml)."""
    result = run_cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout
    assert "simulate  run a scenario on the deterministic simulator" in result.stdout
