"""Third-party secrets encrypted at rest: users' X and Facebook tokens, webhook signing secrets.

Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``) under a MultiFernet of the keys in
FARM_TOKEN_KEYS, newest first: the first key encrypts, every key decrypts, and :func:`reseal`
re-encrypts a value under the first. Rotating is: put a new key in front, restart, run
`farm social rotate-keys` (every stored secret resealed), then drop the old key.

With no FARM_TOKEN_KEYS, one key is made on first use in FARM_STATE_DIR/token-keys (mode 0600):
right for one machine and the demo; a farm on several machines must share FARM_TOKEN_KEYS.
A value is never logged, and a value no configured key opens is a :class:`SealedUnreadable`,
a permanent error naming no secret.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from config.settings import Settings, get_settings
from tasks.core.errors import PermanentError
from tasks.core.process_local import ProcessLocal

log = logging.getLogger("farm.sealed")

KEY_FILE = "token-keys"
_boxes: ProcessLocal[str, MultiFernet] = ProcessLocal("token boxes")


class SealedUnreadable(PermanentError):
    """A stored secret that none of FARM_TOKEN_KEYS opens (a key dropped too early)."""


def new_key() -> str:
    return Fernet.generate_key().decode()


def key_list(s: Settings) -> list[str]:
    """The configured keys, newest first; else the machine's own key file, made if missing."""
    if s.token_keys:
        keys = [k.strip() for k in s.token_keys.split(",") if k.strip()]
    else:
        keys = [_local_key(s.state_dir / KEY_FILE)]
    for i, key in enumerate(keys):
        try:
            Fernet(key)
        except ValueError:
            raise ValueError(f"FARM_TOKEN_KEYS: key {i + 1} is not a Fernet key (32 url-safe "
                             "base64 bytes; `farm social new-key` makes one)") from None
    return keys


def _local_key(path: Path) -> str:
    try:
        return path.read_text().split()[0]
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: of processes starting together, one writes and the others read its key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().split()[0]
    with os.fdopen(fd, "w") as f:
        f.write(new_key() + "\n")
    log.warning("made a token key in %s; a farm on several machines must set FARM_TOKEN_KEYS",
                path)
    return path.read_text().split()[0]


def box(s: Settings | None = None) -> MultiFernet:
    s = s or get_settings()
    signature = f"{s.token_keys}|{s.state_dir}"
    return _boxes.get(signature, lambda: MultiFernet([Fernet(k) for k in key_list(s)]))


def seal(plain: str, s: Settings | None = None) -> str:
    return box(s).encrypt(plain.encode()).decode()


def unseal(sealed: str, s: Settings | None = None) -> str:
    try:
        return box(s).decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise SealedUnreadable("a stored secret is unreadable with FARM_TOKEN_KEYS (was its key "
                               "dropped before `farm social rotate-keys` ran?)") from None


def reseal(sealed: str, s: Settings | None = None) -> str:
    """The same secret under the newest key (MultiFernet.rotate)."""
    try:
        return box(s).rotate(sealed.encode()).decode()
    except InvalidToken:
        raise SealedUnreadable("a stored secret is unreadable with FARM_TOKEN_KEYS") from None
