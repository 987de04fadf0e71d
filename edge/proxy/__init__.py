"""The inbound API-protection proxy: a fair, tiered reverse proxy in front of an operator's own API.

General layout (one concern per module), in the order a request meets them:
- app       the ASGI app: one request from identification to the streamed response (the one pipeline, which
            the simulator also drives over its own transport)
- callers   who is calling: configured key (found by digest), trusted tier header, or anonymous by address
- body      reading request bodies: a buffered head before admission, a rate-guarded stream after
- gate      the Trio shell of the pure FairScheduler (scheduler/fair.py): waits, wake-ups, refusals, expiry
- headers   hop-by-hop removal, Forwarded / X-Forwarded-For, RateLimit and Retry-After fields
- upstream  the way to the upstream: a keep-alive pool of its own for real sockets, or any httpx transport
- wire      the pool's HTTP/1.1, sans I/O: request heads out, strictly framed responses in
- metrics   Prometheus series per listener, tier and (bounded) key
- listener  running one `[[protect]]` section: upstream pool, timer task, and its server (edge/http/server.py,
            the front end every listener has)
"""

from edge.proxy.app import ProxyApp as ProxyApp
from edge.proxy.callers import Caller as Caller
from edge.proxy.callers import CallerDirectory as CallerDirectory
from edge.proxy.gate import Gate as Gate
from edge.proxy.listener import open_proxy as open_proxy
from edge.proxy.listener import serve_protected as serve_protected
from edge.proxy.metrics import ProxyMetrics as ProxyMetrics

__all__ = ["Caller", "CallerDirectory", "Gate", "ProxyApp", "ProxyMetrics", "open_proxy", "serve_protected"]
