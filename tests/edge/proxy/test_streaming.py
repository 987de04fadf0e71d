"""A 50 MB body passes both ways through the proxy with memory far below its size.

Memory is measured with tracemalloc around each transfer, so it covers every Python allocation in the process:
the test client, the proxy (its own front end and upstream pool) and the upstream. The client and the upstream
stream too (64 KiB chunks, hashed on the fly), so the peak shows what the proxy buffers.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator

from tests.edge.proxy.support import CHUNK_BYTES, expected_download_sha256, harness

BODY_BYTES = 50 * 1000 * 1000
# Far below 50 MB: a proxy that buffered a whole body would peak above it (measured: ~1.5 MB).
PEAK_BYTES_MAX = 8 * 1024 * 1024


async def _upload_chunks() -> AsyncIterator[bytes]:
    """The same bytes the upstream's /download sends, so `expected_download_sha256` checks both ways."""
    chunk = bytes(range(256)) * (CHUNK_BYTES // 256)
    for start in range(0, BODY_BYTES, CHUNK_BYTES):
        yield chunk[: min(CHUNK_BYTES, BODY_BYTES - start)]


async def test_50_mb_streams_up_and_down_with_small_memory() -> None:
    async with harness() as h:
        tracemalloc.start()
        try:
            uploaded = await h.client.post(
                "/upload", content=_upload_chunks(), headers={"content-length": str(BODY_BYTES)}
            )
            upload_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            received, received_digest = 0, hashlib.sha256()
            async with h.client.stream("GET", f"/download?bytes={BODY_BYTES}") as downloaded:
                async for chunk in downloaded.aiter_raw():
                    received += len(chunk)
                    received_digest.update(chunk)
            download_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert uploaded.status_code == 200
    assert uploaded.json() == {"bytes": BODY_BYTES, "sha256": expected_download_sha256(BODY_BYTES)}
    assert downloaded.status_code == 200 and downloaded.headers["content-length"] == str(BODY_BYTES)
    assert received == BODY_BYTES
    assert received_digest.hexdigest() == expected_download_sha256(BODY_BYTES)
    assert upload_peak < PEAK_BYTES_MAX, upload_peak
    assert download_peak < PEAK_BYTES_MAX, download_peak


async def test_chunked_upload_without_content_length_streams_too() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"x" * 10_000

    async with harness(body_buffer_bytes=1024) as h:
        response = await h.client.post("/upload", content=pieces())
    assert response.json() == {"bytes": 400_000, "sha256": hashlib.sha256(b"x" * 400_000).hexdigest()}
