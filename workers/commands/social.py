"""`farm social ...`: linked accounts for cross-posting, their keys, and what was posted.

Secrets come only from a file or stdin (``--credentials-file PATH`` or ``-``), never from the
command line, where `ps` and shell history would keep them; nothing printed shows one whole.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.social.accounts import LinkedAccounts

FIELDS = {"twitter": ("token", "secret", "handle"),
          "facebook": ("page_id", "page_token", "page_name")}
REQUIRED = {"twitter": ("token", "secret"), "facebook": ("page_id", "page_token")}
MAX_CREDENTIALS_FILE = 64 * 1024  # bytes: a few tokens, never a big file read by mistake


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("social", help="link accounts for cross-posts, rotate their key, see posts")
    ssub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    link = ssub.add_parser("link", help="link a user's X account or Facebook Page")
    link.add_argument("network", choices=sorted(FIELDS))
    link.add_argument("user", type=int)
    link.add_argument("--credentials-file", required=True, metavar="PATH|-",
                      help='JSON: X {"token", "secret", "handle"}; Facebook {"page_id", '
                           '"page_token", "page_name"}; "-" reads stdin')
    unlink = ssub.add_parser("unlink", help="forget a user's linked account")
    unlink.add_argument("network", choices=sorted(FIELDS))
    unlink.add_argument("user", type=int)
    unlink.add_argument("--reason", default="unlinked by an operator")
    listing = ssub.add_parser("list", help="every linked account, credentials masked")
    listing.add_argument("--json", action="store_true")
    ssub.add_parser("rotate-keys", help="reseal every stored token under the newest "
                                        "FARM_TOKEN_KEYS key")
    ssub.add_parser("new-key", help="print a fresh key to put first in FARM_TOKEN_KEYS")
    posts = ssub.add_parser("posts", help="a photo's cross-post records")
    posts.add_argument("photo", type=int)
    posts.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "new-key":
        from tasks.core.sealed import new_key

        print(new_key())
        return 0
    from config.settings import get_settings
    from tasks.core.redis import data_redis
    from tasks.core.sealed import SealedUnreadable
    from tasks.social.accounts import LinkedAccounts

    s = get_settings()
    accounts = LinkedAccounts(data_redis(), s)
    try:
        if args.action == "link":
            return _link(accounts, args)
        if args.action == "unlink":
            if accounts.unlink(args.user, args.network, reason=args.reason):
                print(f"user {args.user}: {args.network} account unlinked")
                return 0
            print(f"user {args.user}: no {args.network} account linked", file=sys.stderr)
            return 1
        if args.action == "list":
            return _list(accounts.listing(), as_json=args.json)
        if args.action == "rotate-keys":
            from tasks.webhooks.subscriptions import Subscriptions

            print(f"resealed {accounts.rotate()} account(s) and "
                  f"{Subscriptions(data_redis(), s).rotate()} webhook secret(s) under the "
                  "newest key")
            return 0
        return _posts(args.photo, as_json=args.json)
    except SealedUnreadable as exc:
        print(f"farm social: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"farm social: {exc}", file=sys.stderr)
        return 2


def _link(accounts: LinkedAccounts, args: argparse.Namespace) -> int:
    creds = _read_credentials(args.credentials_file, args.network)
    if args.network == "twitter":
        account = accounts.link_twitter(args.user, creds["token"], creds["secret"],
                                        handle=creds.get("handle") or "")
    else:
        account = accounts.link_facebook(args.user, creds["page_id"], creds["page_token"],
                                         page_name=creds.get("page_name") or "")
    print(f"user {args.user}: {args.network} account {account.label} linked (credentials "
          "sealed)")
    return 0


def _read_credentials(source: str, network: str) -> dict[str, Any]:
    """The JSON object from the file or stdin; ValueError naming what is wrong, never a value."""
    if source == "-":
        text = sys.stdin.read(MAX_CREDENTIALS_FILE + 1)
    else:
        try:
            with Path(source).open(encoding="utf-8") as f:
                text = f.read(MAX_CREDENTIALS_FILE + 1)
        except OSError as exc:
            raise ValueError(f"--credentials-file: cannot read {source}: {exc.strerror}") from None
    if len(text) > MAX_CREDENTIALS_FILE:
        raise ValueError(f"--credentials-file: more than {MAX_CREDENTIALS_FILE} bytes")
    try:
        creds = json.loads(text)
    except ValueError:
        raise ValueError("--credentials-file: not a JSON object") from None
    if not isinstance(creds, dict):
        raise ValueError("--credentials-file: not a JSON object")
    unknown = sorted(set(creds) - set(FIELDS[network]))
    if unknown:
        raise ValueError(f"--credentials-file: unknown field(s) {', '.join(unknown)} for "
                         f"{network} (expected {', '.join(FIELDS[network])})")
    missing = [name for name in REQUIRED[network] if not creds.get(name)]
    if missing:
        raise ValueError(f"--credentials-file: missing {', '.join(missing)}")
    return creds


def _list(rows: list[dict[str, Any]], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no linked accounts")
        return 0
    for row in rows:
        who = (f"page {row['page_id']}" if row["network"] == "facebook" else "account") + (
            f" {row['name']!r}" if row["name"] else "")
        creds = f"token {row['token']}" + (f" secret {row['secret']}" if "secret" in row else "")
        print(f"user {row['user_id']:<8} {row['network']:<9} {who}  {creds}  linked "
              f"{_when(row['linked_at'])}")
    return 0


def _posts(photo_id: int, *, as_json: bool) -> int:
    from config.settings import get_settings
    from tasks.core.redis import data_redis
    from tasks.social.posts import PostRecords

    records = PostRecords(data_redis(), get_settings()).of_photo(photo_id)
    if as_json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return 0
    if not records:
        print(f"photo {photo_id}: no cross-posts recorded")
        return 0
    for network, record in records.items():
        parts = [f"{name}={value}" for name, value in record.items()
                 if name not in ("at", "pending")]
        if "at" in record:
            parts.append(f"at={_when(float(record['at']))}")
        if "pending" in record:
            pending = record["pending"]
            parts.append(f"pending since {_when(float(pending.get('at', 0)))} "
                         f"({pending.get('account', '?')}): outcome unknown")
        print(f"photo {photo_id} {network}: {' '.join(parts)}")
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
