"""Patches to pinned third-party releases, each in one module named after the package it patches.

General layout:
    httpcore    HTTP/2 streams whose request was cancelled are reset, so a connection never runs out of streams

Importing any of this changes nothing: each patch is applied by its module's `install()`, which first checks
that the installed release is the one the patch was written against (a RuntimeError names both otherwise) and
is harmless to call again. `install_all()` is called where a process starts serving (`edge.node.run_node`,
`edge.http.server.serve_asgi`, which the proxy's listeners and the tests go through), never by an import.
"""

from __future__ import annotations

from edge.vendor import httpcore


def install_all() -> None:
    """Apply every patch (idempotent); raises RuntimeError if a pinned package is not the release patched."""
    httpcore.install()


__all__ = ["httpcore", "install_all"]
