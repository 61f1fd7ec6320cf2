"""Secrets at rest: MultiFernet over FARM_TOKEN_KEYS, or a key file made once per machine."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from config.settings import get_settings, replace
from tasks.core import sealed


def test_without_configured_keys_one_private_key_file_is_made_once(tmp_path: Path) -> None:
    s = replace(get_settings(), token_keys="", state_dir=tmp_path)
    token = sealed.seal("user-token-123", s)
    path = tmp_path / sealed.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "user-token-123" not in token
    assert sealed.unseal(token, s) == "user-token-123"
    assert Fernet(path.read_text().strip()).decrypt(token.encode()) == b"user-token-123"


def _key_in(state_dir: str, out: multiprocessing.Queue[str]) -> None:
    s = replace(get_settings(), token_keys="", state_dir=Path(state_dir))
    out.put(sealed.key_list(s)[0])


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_key_in, args=(str(tmp_path), out)) for _ in range(6)]
    for p in procs:
        p.start()
    keys = {out.get(timeout=30) for _ in procs}
    for p in procs:
        p.join(30)
    assert len(keys) == 1


def test_rotation_reseals_under_the_newest_key(tmp_path: Path) -> None:
    old, new = sealed.new_key(), sealed.new_key()
    with_old = replace(get_settings(), token_keys=old, state_dir=tmp_path)
    both = replace(with_old, token_keys=f"{new},{old}")
    only_new = replace(with_old, token_keys=new)
    token = sealed.seal("secret", with_old)
    assert sealed.unseal(token, both) == "secret"
    rotated = sealed.reseal(token, both)
    assert sealed.unseal(rotated, only_new) == "secret"
    with pytest.raises(sealed.SealedUnreadable):
        sealed.unseal(token, only_new)  # the old value needed the dropped key


def test_a_bad_key_is_named_without_showing_it(tmp_path: Path) -> None:
    s = replace(get_settings(), token_keys=f"{sealed.new_key()},not-a-key", state_dir=tmp_path)
    with pytest.raises(ValueError, match="key 2 is not a Fernet key") as err:
        sealed.seal("x", s)
    assert "not-a-key" not in str(err.value)
