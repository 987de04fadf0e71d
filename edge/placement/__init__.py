"""Where a job lives in the cluster: membership start-up, one owner per queue key, forwarding and hand-off, and the
authenticated node-to-node API."""
