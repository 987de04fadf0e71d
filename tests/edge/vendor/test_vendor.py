"""The vendor patches: nothing changes on import, `install()` patches once and refuses a release it was not
written for, naming the package and both versions (a check that `python -O` cannot strip)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import ModuleType

import httpcore
import pytest
from httpcore._async.http2 import AsyncHTTP2Connection

import edge.vendor
from edge.vendor import httpcore as httpcore_patch

PATCHES = [httpcore_patch]
PACKAGE_OF = {httpcore_patch: "httpcore"}


@pytest.fixture
def unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as before any install (other tests serve, and serving installs); restored afterwards."""
    monkeypatch.setattr(AsyncHTTP2Connection, "_response_closed", httpcore_patch._original_response_closed)


def run_python(source: str, *options: str) -> str:
    completed = subprocess.run(
        [sys.executable, *options, "-c", textwrap.dedent(source)], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_importing_the_vendor_package_patches_nothing_until_install() -> None:
    probe = """
        import sys
        import httpcore._async.http2
        original_close = httpcore._async.http2.AsyncHTTP2Connection._response_closed
        import edge.vendor, edge.vendor.httpcore
        import edge.http.server, edge.placement.peers, edge.node  # importing their users patches nothing either
        before = (
            httpcore._async.http2.AsyncHTTP2Connection._response_closed is original_close,
            edge.vendor.httpcore.is_installed(),
        )
        edge.vendor.install_all()
        print(before, edge.vendor.httpcore.is_installed(), "hypercorn" in sys.modules)
    """
    assert run_python(probe) == "(True, False) True False"  # and the node never loads hypercorn


def patched_target(patch: ModuleType) -> object:
    """What `patch` replaces, as it is now."""
    return AsyncHTTP2Connection._response_closed


@pytest.mark.usefixtures("unpatched")
@pytest.mark.parametrize("patch", PATCHES, ids=lambda patch: patch.__name__)
def test_install_is_idempotent(patch: ModuleType) -> None:
    assert not patch.is_installed()
    patch.install()
    installed = patched_target(patch)
    patch.install()
    edge.vendor.install_all()
    assert patch.is_installed() and patched_target(patch) is installed


@pytest.mark.usefixtures("unpatched")
def test_install_all_installs_every_patch() -> None:
    edge.vendor.install_all()
    assert AsyncHTTP2Connection._response_closed is httpcore_patch._response_closed_with_reset


@pytest.mark.usefixtures("unpatched")
@pytest.mark.parametrize("patch", PATCHES, ids=lambda patch: patch.__name__)
def test_a_release_other_than_the_one_patched_is_refused(monkeypatch: pytest.MonkeyPatch, patch: ModuleType) -> None:
    monkeypatch.setattr(patch, "installed_version", lambda: "99.0.0")
    package = PACKAGE_OF[patch]
    with pytest.raises(RuntimeError) as refused:
        patch.install()
    assert f"patches {package} {patch.PATCHED_VERSION}, but {package} 99.0.0 is installed" in str(refused.value)
    assert not patch.is_installed()
    with pytest.raises(RuntimeError, match=f"{package} 99.0.0"):
        edge.vendor.install_all()


@pytest.mark.usefixtures("unpatched")
def test_httpcore_is_checked_by_its_own_version_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpcore, "__version__", "1.0.10")
    with pytest.raises(RuntimeError, match=r"patches httpcore 1\.0\.9, but httpcore 1\.0\.10 is installed"):
        httpcore_patch.install()
    assert not httpcore_patch.is_installed()


def test_the_version_check_survives_python_dash_o() -> None:
    """The old check was a bare `assert`, which -O removes; the refusal must not depend on assertions."""
    probe = """
        import edge.vendor.httpcore as patch
        patch.installed_version = lambda: "0.0.1"
        try:
            patch.install()
        except RuntimeError as error:
            print("refused:", error)
    """
    assert run_python(probe, "-O").startswith("refused: edge.vendor.httpcore patches httpcore 1.0.9")
