"""EZThrottle Edge: a node of the API protection layer.

General layout (bottom up; tests/test_layering.py holds the import rules between these):
    problems    RFC 9457 problem+json errors
    config      frozen configuration from TOML + environment + flags
    runtime     what a node takes from the world: wall clock, randomness, DNS, HTTP transport
    metrics     the node's Prometheus registry
    wire/       HTTP/1.1 sans I/O: requests in (the front end), responses in and request heads out (the clients)
    engine/     the job engine's pure core (job spec and queue keys, durable records, signing, ...);
                engine/shell/ is its Trio shell: queues, executor, webhook delivery
    store/      durable job records: SQLite with group commit, or in memory
    outbound/   outbound HTTP: URL origins, the client, its keep-alive transport, the SSRF guard
    http/       the job API's ASGI app (api) and the front end serving it (server: HTTP/1.1 on wire/, HTTP/2 on h2)
    placement/  the node's place in the cluster: membership, job routing, the node-to-node API
    proxy/      the inbound protection proxy
    node        the nursery that holds a node together; cli is the `ezthrottle` command
"""
