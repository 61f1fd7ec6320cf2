"""The Standard Webhooks headers and the body: verified by the scheme's own library and by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from config.settings import get_settings
from tasks.webhooks import signing
from tasks.webhooks.signing import Event

PHOTO = 3_141_592_653_589_793_238  # 64 bits: past JavaScript's exact integers


def event(**changes: object) -> Event:
    base = {"subscription_id": 7, "object": "tag", "object_id": "sunset", "photo_id": PHOTO,
            "owner_id": 42, "at": 1_700_000_000.25}
    return Event(**{**base, **changes})  # type: ignore[arg-type]


def test_secret_is_standard_webhooks_form() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert signing.new_secret() != secret


def test_body_is_small_compact_json_without_caption() -> None:
    text = signing.body(event(), get_settings())
    assert " " not in text and len(text) < 400
    doc = json.loads(text)
    assert doc == {"type": "photo.created", "timestamp": "2023-11-14T22:13:20.250Z",
                   "data": {"subscription_id": 7, "object": "tag", "object_id": "sunset",
                            "photo_id": str(PHOTO), "owner_id": 42,
                            "link": f"https://photofarm.example/p/{PHOTO}"}}


def test_message_id_is_stable_per_subscription_and_photo() -> None:
    assert signing.message_id(7, PHOTO) == f"msg_7_{PHOTO}" == signing.message_id(7, PHOTO)
    assert signing.message_id(8, PHOTO) != signing.message_id(7, PHOTO)


def test_signature_verifies_with_the_standard_library_and_by_hand() -> None:
    secret = signing.new_secret()
    payload = signing.body(event(), get_settings())
    headers = signing.headers(secret, "msg_7_1", payload)
    # The scheme's own verification (timestamp within 5 minutes, v1 HMAC).
    assert Webhook(secret).verify(payload.encode(), headers) == json.loads(payload)
    # By hand: base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), key = the secret's bytes.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{payload}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) <= 2
    assert headers["Content-Type"] == "application/json"


def test_tampering_or_another_secret_or_an_old_timestamp_fails() -> None:
    secret = signing.new_secret()
    payload = signing.body(event(), get_settings())
    headers = signing.headers(secret, "msg_7_1", payload)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(payload.replace("42", "43").encode(), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(payload.encode(), headers)
    old = signing.headers(secret, "msg_7_1", payload, now=time.time() - 600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(payload.encode(), old)
