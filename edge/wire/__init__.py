"""HTTP/1.1 on the wire, sans I/O (RFC 9112): requests as the front end reads them (request), responses as the
node's own clients read them and the request heads they write (response), and the strict reading both share
(framing). No sockets here: the callers feed bytes and act on what comes back."""
