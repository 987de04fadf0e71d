"""The node's HTTP surfaces: the job API (ASGI) and the hardened hypercorn server that serves it and the proxy."""
