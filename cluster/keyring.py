"""The cluster keyring: HMAC-SHA256 keys that authenticate every datagram and stream.

Several keys are accepted and one, the primary, signs what this node sends, so keys rotate without a flag day:
1. add the new key on every node (`with_key`): everyone accepts both;
2. make it primary on every node (`with_primary`): senders switch, receivers still accept either;
3. remove the old key everywhere (`without_key`).

Authentication only: gossip travels in the clear (memberlist encrypts with AES-GCM; XX: add encryption if
member metadata ever carries secrets).
"""

from __future__ import annotations

import hmac
from typing import final

TAG_BYTES = 32  # HMAC-SHA256
# 16 bytes is 128 bits of key. Longer than SHA-256's 64-byte block gains nothing: HMAC hashes it down.
KEY_BYTES_MIN = 16
KEY_BYTES_MAX = 64


class InsecureClusterError(RuntimeError):
    """A node without a keyring was asked to talk to others and was not started with the insecure flag."""


@final
class Keyring:
    """Immutable: rotation builds a new keyring and the node swaps it in (`SwimNode.set_keyring`)."""

    __slots__ = ("_keys",)

    def __init__(self, primary: bytes, *others: bytes) -> None:
        keys = tuple(dict.fromkeys((primary, *others)))  # primary first, duplicates dropped
        for key in keys:
            if not KEY_BYTES_MIN <= len(key) <= KEY_BYTES_MAX:
                raise ValueError(f"cluster keys must be {KEY_BYTES_MIN}..{KEY_BYTES_MAX} bytes, got {len(key)}")
        self._keys = keys

    def __repr__(self) -> str:
        return f"<Keyring: {len(self._keys)} key(s)>"  # never the key material

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Primary first."""
        return self._keys

    def sign(self, data: bytes) -> bytes:
        return hmac.digest(self._keys[0], data, "sha256")

    def verify(self, data: bytes, tag: bytes) -> bool:
        """True if any accepted key made `tag`. Primary first: in steady state that is the only key tried."""
        return any(hmac.compare_digest(hmac.digest(key, data, "sha256"), tag) for key in self._keys)

    def with_key(self, key: bytes) -> Keyring:
        """Also accept `key` (rotation step 1)."""
        return Keyring(*self._keys, key)

    def with_primary(self, key: bytes) -> Keyring:
        """Sign with `key` from now on, still accepting the others (rotation step 2)."""
        return Keyring(key, *self._keys)

    def without_key(self, key: bytes) -> Keyring:
        """Stop accepting `key` (rotation step 3). Refused for the primary: make another key primary first."""
        if key == self._keys[0]:
            raise ValueError("cannot remove the primary key; make another key primary first")
        return Keyring(*(k for k in self._keys if k != key))
