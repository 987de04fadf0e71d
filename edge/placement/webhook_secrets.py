"""Per-account webhook secrets set through the API: one value on every node, kept across restarts, never in clear.

What they are for. `POST /api/v1/webhook-secrets` (edge/http/secrets.py) sets an account's primary secret (and a
secondary one, for rotation); the webhook deliverer signs with the primary on whichever node runs the job, so the
secret must reach every member. It is therefore a setting of the shared map (cluster/shared.py): a last-writer-wins
entry `webhook_secrets:<account id>`, carried by gossip and push-pull to every member (joining and healing ones
included) and saved in each node's store (edge/placement/shared_state.py), so a restart remembers it. A delete
writes `None`, the map's tombstone, so it wins over older writes everywhere.

Why encrypted. Gossip is authenticated, not encrypted (cluster/keyring.py), and every node keeps the map in its
SQLite file: a secret in clear would travel the network and sit in every data dir. So the entry holds

    "1." + base64(nonce (12 bytes) + AES-256-GCM(key, nonce, msgpack([primary, secondary | None]), aad=account id))

The account id is the associated data, so an entry copied under another account's key does not open. The AES key
is derived with HKDF-SHA256 from key material the nodes already share, under its own `info` label
(`KEY_INFO`): the gossip's HMAC key is never used as an AES key itself.

Where the key material comes from:
- a node with cluster keys (`cluster.keys`, clustered or not): the keyring. Entries are sealed under the primary and
  opened with any key of the ring, so the keyring's rotation (add, promote, drop) works for secrets too, as long as
  the entries were sealed again (set again) before the key they were sealed with is dropped. XX: re-sealing
  entries automatically after a promotion would need a write that does not win over a concurrent newer one.
- a node alone without keys: a random 32-byte key of its own, created on first use in its data dir
  (`LOCAL_KEY_FILENAME`, mode 0600). The SQLite file alone does not reveal the secrets; someone with the whole data
  dir has both, as with any local key file. Entries it sealed stay readable if the node later gets a keyring.
- a cluster without keys (`--insecure-cluster`, a development mode): there is no key every member shares, so
  setting secrets is refused (`SecretsUnavailable`) rather than stored in clear or readable by one node only.

Reading. A value that does not open (sealed under a key this node lacks, or damaged) counts as no secret set: the
deliverer then signs with the account's `webhook_secret` from the config file, if any, and a warning is logged
once per value. Opened values are cached by their sealed text, so signing a webhook costs a dict lookup.

Bounds. A shared value is at most SHARED_VALUE_BYTES_MAX (256) bytes packed, so each secret is at most
`SECRET_BYTES_MAX` (64) UTF-8 bytes: two of them packed are at most 1 + 2 * (2 + 64) = 133 bytes, sealed 161,
base64 216 characters, 218 with the format prefix, 220 packed as a msgpack str.

Randomness. Nonces and the local key come from `os.urandom`, never from the runtime's rng: that one is seedable
(the simulator seeds it) and not meant for keys. No decision of the node depends on these bytes, so a simulated
run stays deterministic; only the sealed text differs from run to run.

Secrets never appear in logs or reprs (`WebhookSecrets.__repr__` masks them).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cluster import Keyring
from edge.config import WEBHOOK_SECRET_CHARS_MIN
from edge.placement.account_queues import SharedState
from edge.placement.shared_state import encode_entry
from edge.store import Store

log = logging.getLogger("ezthrottle.webhook_secrets")

SHARED_KEY_PREFIX: Final = "webhook_secrets:"
SECRET_CHARS_MIN: Final = WEBHOOK_SECRET_CHARS_MIN  # the hosted service's minimum, as the SDKs check it
SECRET_BYTES_MAX: Final = 64  # UTF-8 bytes: what fits two secrets in one shared value (module docstring)
KEY_INFO: Final = b"ezthrottle-edge/webhook-secrets/aes-256-gcm/v1"
LOCAL_KEY_FILENAME: Final = "webhook-secrets.key"
LOCAL_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12  # AES-GCM's standard nonce; random nonces are safe for far more than 2**32 seals per key
FORMAT_PREFIX: Final = "1."


class SecretsUnavailable(Exception):
    """This node cannot seal secrets: a cluster without keys, or an unreadable local key file."""


@dataclass(frozen=True, slots=True)
class WebhookSecrets:
    """An account's webhook secrets. The repr masks them: they must never reach a log line."""

    primary: str
    secondary: str | None = None

    def __post_init__(self) -> None:
        for secret in (self.primary, self.secondary):
            if secret is not None:
                refused = secret_refusal(secret)
                if refused:
                    raise ValueError(refused)

    def __repr__(self) -> str:
        secondary = "None" if self.secondary is None else repr(mask(self.secondary))
        return f"WebhookSecrets(primary={mask(self.primary)!r}, secondary={secondary})"


def secret_refusal(secret: str) -> str | None:
    """Why `secret` cannot be a webhook secret, or None. Never raises."""
    if len(secret) < SECRET_CHARS_MIN:
        return f"must be at least {SECRET_CHARS_MIN} characters"
    try:
        size = len(secret.encode())
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): it has no UTF-8, so nothing can sign with it
        return "must be valid Unicode text"
    if size > SECRET_BYTES_MAX:
        return f"must be at most {SECRET_BYTES_MAX} bytes as UTF-8"
    return None


def mask(secret: str) -> str:
    """The first and last four characters around "****" ("abcd****efgh"), as the hosted API shows secrets."""
    return f"{secret[:4]}****{secret[-4:]}"


def _derive(material: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO).derive(material)
    return AESGCM(key)


class SecretBox:
    """Seals and opens secret values with AES-GCM under keys derived from the cluster keyring or a local key."""

    def __init__(self, *, keyring: Keyring | None, local_key_path: Path | None) -> None:
        """`keyring`: the cluster's keys (None without). `local_key_path`: where a node's own key lives, or None
        when the node may not use one (a cluster without keys)."""
        self._ring = [_derive(key) for key in keyring.keys] if keyring is not None else []
        self._local_key_path = local_key_path
        self._local: AESGCM | None = None

    def seal(self, account_id: str, plaintext: bytes) -> str:
        cipher = self._ring[0] if self._ring else self._local_cipher(create=True)
        if cipher is None:
            raise SecretsUnavailable(
                "this cluster has no cluster.keys (--insecure-cluster): webhook secrets are shared sealed under a "
                "key derived from them, so they need one"
            )
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + cipher.encrypt(nonce, plaintext, account_id.encode())
        return FORMAT_PREFIX + base64.b64encode(sealed).decode("ascii")

    def open(self, account_id: str, sealed: str) -> bytes | None:
        """The plaintext, or None when no key of this node opens it (or it is not a sealed value)."""
        if not sealed.startswith(FORMAT_PREFIX):
            return None
        try:
            raw = base64.b64decode(sealed[len(FORMAT_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            return None
        nonce, body = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
        if len(nonce) < NONCE_BYTES:
            return None
        local = self._local_cipher(create=False)
        for cipher in [*self._ring, *([local] if local is not None else [])]:
            try:
                return cipher.decrypt(nonce, body, account_id.encode())
            except InvalidTag:
                continue
        return None

    def _local_cipher(self, *, create: bool) -> AESGCM | None:
        """The node's own key, read (or, with `create`, made) on first use; None when it has none."""
        if self._local is not None or self._local_key_path is None:
            return self._local
        path = self._local_key_path
        if not path.exists():
            if not create:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # made meanwhile: read it below
            else:
                with os.fdopen(fd, "w") as out:
                    out.write(os.urandom(LOCAL_KEY_BYTES).hex() + "\n")
        text = path.read_text().strip()
        try:
            material = bytes.fromhex(text)
        except ValueError:
            material = b""
        if len(material) != LOCAL_KEY_BYTES:
            raise SecretsUnavailable(f"{path} is not a key of {LOCAL_KEY_BYTES} bytes in hex")
        self._local = _derive(material)
        return self._local


def _pack(secrets: WebhookSecrets) -> bytes:
    packed: bytes = msgpack.packb([secrets.primary, secrets.secondary], use_bin_type=True)
    return packed


def _unpack(plaintext: bytes) -> WebhookSecrets | None:
    try:
        primary, secondary = msgpack.unpackb(plaintext, raw=False)
        if not isinstance(primary, str) or not (secondary is None or isinstance(secondary, str)):
            return None
        return WebhookSecrets(primary=primary, secondary=secondary)
    except (ValueError, TypeError, msgpack.ExtraData):
        return None


class WebhookSecretStore:
    """The accounts' webhook secrets in the shared map, sealed (see the module docstring)."""

    def __init__(self, *, shared: SharedState, box: SecretBox, store: Store | None = None) -> None:
        """`store`: where a change is saved before `put` / `delete` return (the shared map's own saver saves it
        too, later); None leaves saving to that saver alone."""
        self._shared = shared
        self._box = box
        self._store = store
        self._opened: dict[str, tuple[str, WebhookSecrets | None]] = {}  # account -> (sealed text, its secrets)

    def get(self, account_id: str) -> WebhookSecrets | None:
        sealed = self.sealed(account_id)
        if sealed is None:
            return None
        cached = self._opened.get(account_id)
        if cached is not None and cached[0] == sealed:
            return cached[1]
        plaintext = self._box.open(account_id, sealed)
        secrets = _unpack(plaintext) if plaintext is not None else None
        if secrets is None:
            log.warning(
                "the webhook secrets of account %s do not open with this node's keys; ignoring them", account_id
            )
        self._opened[account_id] = (sealed, secrets)
        return secrets

    def signing_secret(self, account_id: str) -> str | None:
        """The secret webhooks of `account_id` are signed with, when one was set through the API."""
        secrets = self.get(account_id)
        return secrets.primary if secrets is not None else None

    def sealed(self, account_id: str) -> str | None:
        """What the shared map holds for the account: the sealed text, or None."""
        value = self._shared.shared(SHARED_KEY_PREFIX + account_id)
        return value if isinstance(value, str) else None

    async def put(self, account_id: str, secrets: WebhookSecrets) -> None:
        """Set the account's secrets on every node. Raises SecretsUnavailable, or StoreError when the change is in
        effect but could not be saved (a restart before the next change would forget it)."""
        await self._write(account_id, self._box.seal(account_id, _pack(secrets)))

    async def delete(self, account_id: str) -> None:
        await self._write(account_id, None)

    async def _write(self, account_id: str, value: str | None) -> None:
        entry = self._shared.set_shared(SHARED_KEY_PREFIX + account_id, value)
        if self._store is not None:
            # Saved before the caller hears "ok" (the saver's own write may come later): the store commits in
            # call order, so a newer entry the saver writes afterwards is never overwritten by this one.
            await self._store.save_shared_state(entry.key, encode_entry(entry))
