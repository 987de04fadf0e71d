"""The node's HTTP surfaces: the job API (ASGI) and the front end that serves it and the proxy (HTTP/1.1, HTTP/2)."""
