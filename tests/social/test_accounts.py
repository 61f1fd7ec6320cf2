"""Linked accounts: credentials sealed at rest (nothing of them in any raw value in Redis), masked
wherever shown, resealed under a new key by rotation, and the `farm social` commands."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet

from config.settings import get_settings
from tasks.core.sealed import SealedUnreadable, new_key
from tasks.social.accounts import LinkedAccounts, mask
from tests.social.conftest import PAGE_ID, PAGE_TOKEN, X_SECRET, X_TOKEN, Configure
from workers import cli

KEY_A, KEY_B = new_key(), new_key()
SECRETS = (X_TOKEN, X_SECRET, PAGE_TOKEN)


def raw_values(r: redis.Redis) -> Iterator[tuple[str, str]]:
    """(key, value) for every key, field, member and value in the data Redis."""
    for key in r.scan_iter():
        kind = r.type(key)
        values: list[Any] = []
        if kind == "string":
            values = [r.get(key)]
        elif kind == "hash":
            values = [x for kv in r.hgetall(key).items() for x in kv]
        elif kind == "set":
            values = list(r.smembers(key))
        elif kind == "zset":
            values = list(r.zrange(key, 0, -1))
        elif kind == "list":
            values = r.lrange(key, 0, -1)
        yield key, key
        for value in values:
            yield key, str(value)


def link_both(accounts: LinkedAccounts, user: int = 42) -> None:
    accounts.link_twitter(user, X_TOKEN, X_SECRET, handle="@anna")
    accounts.link_facebook(user, PAGE_ID, PAGE_TOKEN, page_name="Anna's photos")


def test_credentials_are_sealed_at_rest_and_read_back_in_memory_only(
        data: redis.Redis, configure: Configure) -> None:
    s = configure(FARM_TOKEN_KEYS=KEY_A)
    accounts = LinkedAccounts(data, s)
    link_both(accounts)
    for key, value in raw_values(data):
        for secret in SECRETS:
            assert secret not in value, f"{key} holds a credential in the clear"
            assert secret[4:20] not in value  # nor a piece of one
    stored = data.hget(s.key("social", "account", "twitter", 42), "sealed")
    assert json.loads(Fernet(KEY_A.encode()).decrypt(stored.encode())) == {
        "token": X_TOKEN, "secret": X_SECRET}
    x = accounts.get(42, "twitter")
    fb = accounts.get(42, "facebook")
    assert x is not None and (x.token, x.secret, x.name) == (X_TOKEN, X_SECRET, "anna")
    assert fb is not None and (fb.token, fb.page_id, fb.name) == (PAGE_TOKEN, PAGE_ID,
                                                                  "Anna's photos")
    assert accounts.get(43, "twitter") is None


def test_credentials_are_masked_in_reprs_and_listings(data: redis.Redis,
                                                      configure: Configure) -> None:
    accounts = LinkedAccounts(data, configure())
    link_both(accounts)
    x = accounts.get(42, "twitter")
    for shown in (repr(x), str(x), repr(accounts.get(42, "facebook")),
                  json.dumps(accounts.listing())):
        for secret in SECRETS:
            assert secret not in shown and secret[4:12] not in shown
    assert f"token='{X_TOKEN[:4]}…'" in repr(x) and f"secret='{X_SECRET[:4]}…'" in repr(x)
    rows = {row["network"]: row for row in accounts.listing()}
    assert rows["twitter"]["token"] == mask(X_TOKEN) == X_TOKEN[:4] + "…"
    assert rows["facebook"]["token"] == PAGE_TOKEN[:4] + "…"
    assert (rows["facebook"]["page_id"], rows["twitter"]["name"]) == (PAGE_ID, "anna")
    assert mask("short") == "…"  # too short to show any of it


def test_unlink_records_why_and_when(data: redis.Redis, configure: Configure) -> None:
    accounts = LinkedAccounts(data, configure())
    link_both(accounts)
    assert accounts.unlink(42, "twitter", reason="X said 401")
    assert not accounts.unlink(42, "twitter")
    assert accounts.get(42, "twitter") is None and accounts.get(42, "facebook") is not None
    gone = accounts.last_unlink(42, "twitter")
    assert gone is not None and (gone.reason, gone.name) == ("X said 401", "anna")
    assert accounts.unlink(42, "facebook")
    gone = accounts.last_unlink(42, "facebook")
    assert gone is not None and gone.reason == "unlinked by the user"
    accounts.link_facebook(42, PAGE_ID, PAGE_TOKEN)
    assert [(r["network"], r["user_id"]) for r in accounts.listing()] == [("facebook", 42)]
    accounts.link_twitter(42, X_TOKEN, X_SECRET)  # linked again: works as before
    assert accounts.get(42, "twitter") is not None


def test_rotation_reseals_under_the_newest_key(data: redis.Redis, configure: Configure) -> None:
    accounts = LinkedAccounts(data, configure(FARM_TOKEN_KEYS=KEY_A))
    link_both(accounts, 42)
    link_both(accounts, 43)
    before = data.hget("farm:social:account:twitter:42", "sealed")

    rotating = LinkedAccounts(data, configure(FARM_TOKEN_KEYS=f"{KEY_B},{KEY_A}"))
    assert rotating.get(42, "twitter") is not None  # B first, A still opens the old ones
    assert rotating.rotate() == 4
    assert data.hget("farm:social:account:twitter:42", "sealed") != before

    only_b = LinkedAccounts(data, configure(FARM_TOKEN_KEYS=KEY_B))
    x = only_b.get(42, "twitter")
    assert x is not None and (x.token, x.secret) == (X_TOKEN, X_SECRET)
    fb = only_b.get(43, "facebook")
    assert fb is not None and fb.token == PAGE_TOKEN

    only_a = LinkedAccounts(data, configure(FARM_TOKEN_KEYS=KEY_A))
    with pytest.raises(SealedUnreadable) as raised:
        only_a.get(42, "twitter")
    assert X_TOKEN not in str(raised.value)
    with pytest.raises(SealedUnreadable, match="4 account"):
        only_a.rotate()
    rows = only_a.listing()
    assert {r["token"] for r in rows} == {"(unreadable with FARM_TOKEN_KEYS)"}


@pytest.mark.parametrize(("call", "message"), [
    (lambda a: a.link_twitter(0, X_TOKEN, X_SECRET), "user_id"),
    (lambda a: a.link_twitter(2**53, X_TOKEN, X_SECRET), "user_id"),
    (lambda a: a.link_twitter(True, X_TOKEN, X_SECRET), "user_id"),
    (lambda a: a.link_twitter(1, "", X_SECRET), "token"),
    (lambda a: a.link_twitter(1, X_TOKEN, "sec ret"), "secret"),
    (lambda a: a.link_twitter(1, X_TOKEN, "x" * 1025), "secret"),
    (lambda a: a.link_twitter(1, X_TOKEN + "\n", X_SECRET), "token"),
    (lambda a: a.link_twitter(1, "tökén", X_SECRET), "token"),
    (lambda a: a.link_twitter(1, X_TOKEN, X_SECRET, handle="not a handle"), "handle"),
    (lambda a: a.link_twitter(1, X_TOKEN, X_SECRET, handle="a" * 16), "handle"),
    (lambda a: a.link_facebook(1, "12ab", PAGE_TOKEN), "page_id"),
    (lambda a: a.link_facebook(1, "", PAGE_TOKEN), "page_id"),
    (lambda a: a.link_facebook(1, PAGE_ID, None), "page_token"),
    (lambda a: a.link_facebook(1, PAGE_ID, PAGE_TOKEN, page_name="x" * 201), "page_name"),
    (lambda a: a.unlink(1, "myspace"), "network"),
])
def test_bad_input_is_refused_with_a_clear_value_error(
        data: redis.Redis, configure: Configure, call: Any, message: str) -> None:
    accounts = LinkedAccounts(data, configure())
    with pytest.raises(ValueError, match=message) as raised:
        call(accounts)
    for secret in SECRETS:
        assert secret not in str(raised.value)
    assert not data.keys("farm:social:account:*")


# -- the `farm social` commands ----------------------------------------------------------------

@pytest.fixture
def farm(monkeypatch: pytest.MonkeyPatch, configure: Configure, data: redis.Redis) -> Any:
    """workers.cli.main, with the test's settings in place."""
    return cli.main


def test_cli_links_from_a_file_and_stdin_lists_masked_and_unlinks(
        farm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], data: redis.Redis) -> None:
    creds = tmp_path / "x.json"
    creds.write_text(json.dumps({"token": X_TOKEN, "secret": X_SECRET, "handle": "anna"}))
    assert farm(["social", "link", "twitter", "42", "--credentials-file", str(creds)]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(
        {"page_id": PAGE_ID, "page_token": PAGE_TOKEN, "page_name": "Anna's photos"})))
    assert farm(["social", "link", "facebook", "42", "--credentials-file", "-"]) == 0
    assert farm(["social", "list"]) == 0
    assert farm(["social", "list", "--json"]) == 0
    out = capsys.readouterr().out
    for secret in SECRETS:
        assert secret not in out
    assert "@anna" in out and f"page:{PAGE_ID}" in out and X_TOKEN[:4] + "…" in out
    rows = json.loads(out[out.index("["):])
    assert {(r["network"], r["user_id"]) for r in rows} == {("twitter", 42), ("facebook", 42)}
    accounts = LinkedAccounts(data, get_settings())
    x = accounts.get(42, "twitter")
    assert x is not None and x.secret == X_SECRET

    assert farm(["social", "unlink", "twitter", "42"]) == 0
    assert accounts.get(42, "twitter") is None
    gone = accounts.last_unlink(42, "twitter")
    assert gone is not None and gone.reason == "unlinked by an operator"
    assert farm(["social", "unlink", "twitter", "42"]) == 1


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "not a JSON object"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"token": X_TOKEN}), "missing secret"),
    (json.dumps({"token": X_TOKEN, "secret": X_SECRET, "extra": 1}), "unknown field"),
    (json.dumps({"token": X_TOKEN, "secret": "has space"}), "secret"),
])
def test_cli_refuses_bad_credentials_without_echoing_them(
        farm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
        message: str, data: redis.Redis) -> None:
    creds = tmp_path / "x.json"
    creds.write_text(content)
    assert farm(["social", "link", "twitter", "42", "--credentials-file", str(creds)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    for secret in SECRETS:
        assert secret not in captured.err + captured.out
    assert not data.keys("farm:social:account:*")
    assert farm(["social", "link", "twitter", "42", "--credentials-file",
                 str(tmp_path / "missing.json")]) == 2


def test_cli_has_no_way_to_take_a_secret_on_the_command_line(farm: Any) -> None:
    with pytest.raises(SystemExit):
        farm(["social", "link", "twitter", "42", "--token", X_TOKEN])
    with pytest.raises(SystemExit):
        farm(["social", "link", "twitter", "42"])  # --credentials-file is required


def test_cli_rotates_keys_and_makes_new_ones(farm: Any, configure: Configure,
                                             capsys: pytest.CaptureFixture[str],
                                             data: redis.Redis) -> None:
    assert farm(["social", "new-key"]) == 0
    key = capsys.readouterr().out.strip()
    Fernet(key.encode())  # a real Fernet key
    link_both(LinkedAccounts(data, configure(FARM_TOKEN_KEYS=KEY_A)))
    configure(FARM_TOKEN_KEYS=f"{key},{KEY_A}")
    assert farm(["social", "rotate-keys"]) == 0
    assert "resealed 2 account(s)" in capsys.readouterr().out
    configure(FARM_TOKEN_KEYS=key)
    assert farm(["social", "list"]) == 0
    assert X_TOKEN[:4] + "…" in capsys.readouterr().out
    configure(FARM_TOKEN_KEYS=KEY_A)
    assert farm(["social", "rotate-keys"]) == 1
    assert "unreadable" in capsys.readouterr().err


def test_cli_shows_a_photos_post_records(farm: Any, capsys: pytest.CaptureFixture[str],
                                         data: redis.Redis) -> None:
    from tasks.social.posts import PostRecords

    records = PostRecords(data, get_settings())
    records.record_posted(9, "twitter", post_id="123", account="@anna", user_id=42,
                          how="posted")
    records.mark_pending(9, "facebook", f"page:{PAGE_ID}")
    assert farm(["social", "posts", "9"]) == 0
    out = capsys.readouterr().out
    assert "photo 9 twitter: status=posted post_id=123 account=@anna" in out
    assert "photo 9 facebook: pending since" in out and "outcome unknown" in out
    assert farm(["social", "posts", "9", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["twitter"]["post_id"] == "123" and "pending" in shown["facebook"]
    assert farm(["social", "posts", "10"]) == 0
    assert "no cross-posts recorded" in capsys.readouterr().out
