"""EZThrottle Edge: the Trio shell of a node.

General layout (each module one concern):
    config      frozen configuration from TOML + environment + flags
    runtime     what a node takes from the world: wall clock, randomness, DNS, HTTP transport
    jobs        the job contract: validation, idempotency keys, queue keys
    records     durable job records; store/ keeps them (SQLite with group commit, or in memory)
    queues      one Trio task per active queue key, paced by scheduler/
    executor    one outbound attempt; ssrf guards every target
    webhooks    signed, durable webhook delivery; signing holds the signature scheme
    api         the ASGI app; problems holds its RFC 9457 errors; http_server serves it with hypercorn
    node        the nursery that holds a node together; cli is the `ezthrottle` command
"""
