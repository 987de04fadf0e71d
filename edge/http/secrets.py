"""`/api/v1/webhook-secrets`: an account's webhook signing secrets, as the public SDKs manage them.

Served directly (`Authorization: Bearer <account key>`) and through the SDK proxy (edge/http/envelope.py), with the
same answers both ways:

    POST   {"primary_secret": str, "secondary_secret"?: str | null}   -> 200 {"status": "ok", "message": ...}
    GET    -> 200 {"customer_id", "primary_secret": "abcd****efgh", "secondary_secret": masked | null,
                   "has_secondary", "source": "api" | "config"}    404 when the account has none
    DELETE -> 200 {"status": "ok", "message": "Webhook secrets deleted"}   (also when none were set)

Secrets are 16 to 64 characters (at most 64 bytes as UTF-8: what the shared map holds, see
edge/placement/webhook_secrets.py); a POST replaces both (no secondary_secret clears the secondary). Answers and
problems only ever show them masked, and nothing here logs them.

Secrets set here win over the config file's `webhook_secret`: webhooks are signed with the API's primary when one
is set, else the config's. GET says which one is in use (`source`, an extension the SDKs ignore): with no API
secrets it shows the config's, masked, so a 404 always means webhooks go out unsigned. DELETE removes the API's
secrets only; the config's stay until the file changes.
"""

from __future__ import annotations

import logging
from typing import Any

from edge.config import AccountConfig
from edge.placement.webhook_secrets import (
    SECRET_BYTES_MAX,
    SECRET_CHARS_MIN,
    SecretsUnavailable,
    WebhookSecrets,
    WebhookSecretStore,
    mask,
    secret_refusal,
)
from edge.problems import Problem, invalid
from edge.store import StoreError

log = logging.getLogger("ezthrottle.api")

ALLOWED_METHODS = ("GET", "POST", "DELETE")


class WebhookSecretsApi:
    """The three calls, for an authenticated account. `store` None: the node keeps no API secrets (404)."""

    def __init__(self, store: WebhookSecretStore | None) -> None:
        self._store = store

    async def handle(self, account: AccountConfig, method: str, payload: Any) -> tuple[int, dict[str, Any]]:
        """(status, JSON document) for one call; refusals are raised as `Problem`. `payload` is the parsed body
        (POST only)."""
        if method not in ALLOWED_METHODS:
            allowed = ", ".join(ALLOWED_METHODS)
            raise Problem(405, "Method not allowed", f"use {allowed}", headers={"Allow": allowed})
        if method == "GET":
            return 200, self._view(account)
        store = self._store
        if store is None:
            raise Problem(404, "Not found", "this node keeps no webhook secrets", kind="webhook-secrets-unavailable")
        try:
            if method == "POST":
                await store.put(account.id, _secrets_from(payload))
                return 200, {"status": "ok", "message": "Webhook secrets saved"}
            await store.delete(account.id)
            return 200, {"status": "ok", "message": "Webhook secrets deleted"}
        except SecretsUnavailable as exc:
            raise Problem(409, "Webhook secrets unavailable", str(exc), kind="webhook-secrets-unavailable") from None
        except StoreError:
            log.exception("could not save the webhook secrets of account %s", account.id)
            raise Problem(
                503,
                "Store unavailable",
                "the change is in effect but was not saved: a restart could undo it; send it again",
                kind="store-unavailable",
                headers={"Retry-After": "5"},
            ) from None

    def _view(self, account: AccountConfig) -> dict[str, Any]:
        secrets = self._store.get(account.id) if self._store is not None else None
        if secrets is not None:
            primary, secondary, source = secrets.primary, secrets.secondary, "api"
        elif account.webhook_secret:
            primary, secondary, source = account.webhook_secret, account.webhook_secret_secondary, "config"
        else:
            raise Problem(
                404,
                "No webhook secrets",
                "no webhook secrets are configured for this account; POST one first",
                kind="webhook-secrets-not-found",
            )
        return {
            "customer_id": account.id,
            "primary_secret": mask(primary),
            "secondary_secret": mask(secondary) if secondary is not None else None,
            "has_secondary": secondary is not None,
            "source": source,
        }


def _secrets_from(payload: Any) -> WebhookSecrets:
    if not isinstance(payload, dict):
        raise invalid("body", 'must be a JSON object {"primary_secret": ..., "secondary_secret"?: ...}')
    primary = payload.get("primary_secret")
    secondary = payload.get("secondary_secret")
    for name, value, required in (("primary_secret", primary, True), ("secondary_secret", secondary, False)):
        if value is None and not required:
            continue
        if not isinstance(value, str):
            raise invalid(
                name, f"is required and must be a string of {SECRET_CHARS_MIN} to {SECRET_BYTES_MAX} characters"
            )
        refused = secret_refusal(value)
        if refused:
            raise invalid(name, refused)  # says why, never echoes the value
    assert isinstance(primary, str)
    return WebhookSecrets(primary=primary, secondary=secondary)
