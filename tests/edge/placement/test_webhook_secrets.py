"""Webhook secrets in the shared map: sealed with AES-GCM under a derived key, opened only by the right keys and the
right account, within the shared map's bounds, saved before `put` returns."""

from __future__ import annotations

import base64
import logging
import stat
from pathlib import Path

import msgpack
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cluster import Keyring, SharedEntry
from cluster.shared import SHARED_VALUE_BYTES_MAX, SharedMap
from edge.placement.shared_state import LocalSharedState, SharedStateSaver, decode_entries
from edge.placement.webhook_secrets import (
    FORMAT_PREFIX,
    LOCAL_KEY_FILENAME,
    NONCE_BYTES,
    SECRET_BYTES_MAX,
    SHARED_KEY_PREFIX,
    SecretBox,
    SecretsUnavailable,
    WebhookSecrets,
    WebhookSecretStore,
    mask,
    secret_refusal,
)
from edge.store import open_memory_store

KEY, NEW_KEY, STRANGER = b"k" * 32, b"n" * 32, b"s" * 32
PRIMARY, SECONDARY = "whsec_primary_0123456789", "whsec_secondary_0123456789"


def test_a_sealed_value_opens_only_for_its_account_and_never_shows_the_secret():
    box = SecretBox(keyring=Keyring(KEY), local_key_path=None)
    sealed = box.seal("acme", PRIMARY.encode())
    assert sealed.startswith(FORMAT_PREFIX) and PRIMARY not in sealed
    assert PRIMARY.encode() not in base64.b64decode(sealed[len(FORMAT_PREFIX) :])
    assert box.open("acme", sealed) == PRIMARY.encode()
    assert box.open("other", sealed) is None  # the account id is the associated data
    assert box.seal("acme", PRIMARY.encode()) != sealed  # a fresh nonce every time
    for damaged in ("", "1.", "1.!!!", "2." + sealed[2:], sealed[:-4] + "AAAA", FORMAT_PREFIX + "AAAA"):
        assert box.open("acme", damaged) is None


def test_the_aes_key_is_derived_never_the_gossip_key_itself():
    sealed = SecretBox(keyring=Keyring(KEY), local_key_path=None).seal("acme", b"x" * 16)
    raw = base64.b64decode(sealed[len(FORMAT_PREFIX) :])
    nonce, body = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
    with pytest.raises(InvalidTag):
        AESGCM(KEY).decrypt(nonce, body, b"acme")


def test_keyring_rotation_opens_old_entries_until_their_key_is_dropped():
    old = SecretBox(keyring=Keyring(KEY), local_key_path=None).seal("acme", b"secret-value-0123")
    promoted = SecretBox(keyring=Keyring(NEW_KEY, KEY), local_key_path=None)
    assert promoted.open("acme", old) == b"secret-value-0123"
    resealed = promoted.seal("acme", b"secret-value-0123")
    assert SecretBox(keyring=Keyring(NEW_KEY), local_key_path=None).open("acme", resealed) == b"secret-value-0123"
    assert SecretBox(keyring=Keyring(NEW_KEY), local_key_path=None).open("acme", old) is None
    assert SecretBox(keyring=Keyring(STRANGER), local_key_path=None).open("acme", old) is None


def test_a_lone_node_makes_its_own_key_on_first_seal_and_keeps_it(tmp_path: Path):
    path = tmp_path / "data" / LOCAL_KEY_FILENAME
    box = SecretBox(keyring=None, local_key_path=path)
    assert box.open("acme", "1.AAAA") is None and not path.exists()  # reading never makes a key
    sealed = box.seal("acme", b"secret-value-0123")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(path.read_text())) == 32
    assert SecretBox(keyring=None, local_key_path=path).open("acme", sealed) == b"secret-value-0123"  # a restart
    # It keeps opening after the node gets a keyring; new values are sealed under the ring.
    joined = SecretBox(keyring=Keyring(KEY), local_key_path=path)
    assert joined.open("acme", sealed) == b"secret-value-0123"
    assert SecretBox(keyring=None, local_key_path=path).open("acme", joined.seal("acme", b"y" * 16)) is None


def test_a_damaged_local_key_refuses_to_seal(tmp_path: Path):
    path = tmp_path / LOCAL_KEY_FILENAME
    path.write_text("not hex\n")
    with pytest.raises(SecretsUnavailable, match="is not a key"):
        SecretBox(keyring=None, local_key_path=path).seal("acme", b"x" * 16)


def test_a_cluster_without_keys_cannot_seal():
    box = SecretBox(keyring=None, local_key_path=None)
    with pytest.raises(SecretsUnavailable, match=r"cluster\.keys"):
        box.seal("acme", b"x" * 16)
    assert box.open("acme", "1.AAAA") is None


@pytest.mark.parametrize(
    ("secret", "refused"),
    [
        ("x" * 15, "at least 16 characters"),
        ("x" * 16, None),
        ("x" * SECRET_BYTES_MAX, None),
        ("x" * (SECRET_BYTES_MAX + 1), "at most 64 bytes"),
        ("é" * 32, None),  # 32 characters, 64 bytes
        ("é" * 33, "at most 64 bytes"),
        ("\ud800" * 16, "valid Unicode"),
    ],
)
def test_secret_bounds(secret: str, refused: str | None):
    reason = secret_refusal(secret)
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def test_the_largest_secrets_fit_one_shared_value():
    largest = WebhookSecrets(primary="\u07ff" * 32, secondary="x" * SECRET_BYTES_MAX)  # 64 bytes each
    plaintext = msgpack.packb([largest.primary, largest.secondary], use_bin_type=True)
    sealed = SecretBox(keyring=Keyring(KEY), local_key_path=None).seal("a" * 64, plaintext)
    assert len(msgpack.packb(sealed)) <= SHARED_VALUE_BYTES_MAX
    SharedMap().set(SHARED_KEY_PREFIX + "a" * 64, sealed, 1, "n")  # within every bound of the map


def test_reprs_mask_the_secrets():
    text = repr(WebhookSecrets(primary=PRIMARY, secondary=SECONDARY))
    assert PRIMARY not in text and SECONDARY not in text
    assert mask(PRIMARY) in text and mask(PRIMARY) == "whse****6789"
    with pytest.raises(ValueError, match="at least 16"):
        WebhookSecrets(primary="short")


async def test_put_get_delete_through_the_shared_map_saved_before_put_returns(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    async with open_memory_store() as store:
        saver = SharedStateSaver(store)  # not running: only `put`'s own save can reach the store
        shared = LocalSharedState(node="n1", wall_ms=lambda: 1_000, saver=saver)
        secrets = WebhookSecretStore(
            shared=shared, box=SecretBox(keyring=Keyring(KEY), local_key_path=None), store=store
        )
        assert secrets.get("acme") is None and secrets.signing_secret("acme") is None

        await secrets.put("acme", WebhookSecrets(primary=PRIMARY, secondary=SECONDARY))
        assert secrets.get("acme") == WebhookSecrets(primary=PRIMARY, secondary=SECONDARY)
        assert secrets.signing_secret("acme") == PRIMARY and secrets.get("other") is None
        value = shared.shared(SHARED_KEY_PREFIX + "acme")
        assert isinstance(value, str) and value == secrets.sealed("acme") and PRIMARY not in value
        saved = await store.shared_state()
        assert set(saved) == {SHARED_KEY_PREFIX + "acme"}
        assert PRIMARY.encode() not in saved[SHARED_KEY_PREFIX + "acme"]
        [entry] = decode_entries(saved)
        assert entry.value == value  # what a restart reads back

        await secrets.put("acme", WebhookSecrets(primary=SECONDARY))  # a POST replaces both
        assert secrets.get("acme") == WebhookSecrets(primary=SECONDARY, secondary=None)

        await secrets.delete("acme")
        assert secrets.get("acme") is None and shared.shared(SHARED_KEY_PREFIX + "acme", "absent") is None
        [tombstone] = decode_entries(await store.shared_state())
        assert tombstone.value is None  # a tombstone, so the delete wins over older writes elsewhere
    assert PRIMARY not in caplog.text and SECONDARY not in caplog.text


async def test_a_value_this_node_cannot_open_counts_as_none_and_warns_once(caplog: pytest.LogCaptureFixture):
    foreign = SecretBox(keyring=Keyring(STRANGER), local_key_path=None).seal("acme", b"\x92\xb0whsec_0123456789ab\xc0")
    async with open_memory_store() as store:
        shared = LocalSharedState(
            node="n1",
            wall_ms=lambda: 1_000,
            saver=SharedStateSaver(store),
            entries=[SharedEntry(key=SHARED_KEY_PREFIX + "acme", value=foreign, wall_ms=1, node="n2")],
        )
        secrets = WebhookSecretStore(shared=shared, box=SecretBox(keyring=Keyring(KEY), local_key_path=None))
        with caplog.at_level(logging.WARNING):
            assert secrets.get("acme") is None and secrets.signing_secret("acme") is None
            assert secrets.get("acme") is None
        assert [r.getMessage() for r in caplog.records].count(
            "the webhook secrets of account acme do not open with this node's keys; ignoring them"
        ) == 1
