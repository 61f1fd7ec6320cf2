"""Every message's arguments, checked once: by the enqueue API before it sends, and by the task
base at the entry of every task, with the same limits on both sides. Long because it is the one
place: every limit and every task's checker, side by side.

Each task name has one checker here, a function with the task's own signature that returns the
arguments normalised (:data:`MESSAGES`). ``check(name, args, kwargs)`` binds a message to it.
A wrong value raises :class:`InvalidArgument`, a ``ValueError`` (what the web tier catches) and a
``PermanentError`` (what the task base dead-letters at once, never retried), with one line that
names the argument and what is wrong with it.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from tasks.core.errors import PermanentError

# Limits, with the reason each has.
MAX_USER_ID = 2**53 - 1  # user ids are sorted-set scores in the feed contract: doubles are exact
#                          only this far, so a larger id would be stored as another user's
MAX_PHOTO_ID = 2**63 - 1  # signed 64-bit, as tasks/core/ids.py makes them (only list members)
MAX_KEY_LEN = 512  # storage keys: S3 allows 1024 bytes; ours are short and deterministic
MAX_CAPTION = 2200  # Instagram's caption limit
MAX_ALERT = 1000  # leaves room for the rest of APNs' 4096-byte payload
MAX_SOUND = 64
MAX_NOTIFY_USERS = 100  # one small message, and one small retry if a batch fails
MAX_DATA_BYTES = 1024  # custom push data, as JSON
MAX_REBUILD_USERS = 1000  # users per feed-rebuild batch run: one task's worth of work
MAX_SLEEP = 600.0  # diag.sleep: under any task time limit worth having
NETWORKS = ("twitter", "facebook")
ACTIVITY_KINDS = ("like", "comment", "follow", "mention")
PHOTO_KINDS = ("like", "comment")  # about a photo: the entry must name it
PRIORITIES = (1, 5, 10)  # APNs' apns-priority values
FLAKY_MODES = ("transient", "permanent", "bug", "crash", "ratelimited")
# A message's arguments as JSON, at most: above every valid message (the largest, a 1000-user
# rebuild or a push with a 1,000-emoji alert, are under 20 KB) with room, and far below what
# would bloat a log line, a dead letter or a task event. FARM_MAX_ARG_BYTES (4096, checked at
# publish in the tests) is stricter than what the checkers accept, so it is not used here:
# a worker must never refuse what the enqueue API sends.
MAX_MESSAGE_BYTES = 64 * 1024
TOKEN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # event, notification and marker ids: part of keys


class InvalidArgument(PermanentError, ValueError):
    """An argument no task may run with: the web tier gets a ValueError before sending, a task
    that receives it anyway fails permanently at once (dead-lettered, never retried)."""


def _fail(name: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"{name}: {what}")


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # holds an int too long to print (over sys.get_int_max_str_digits())
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _utf8(value: str) -> bytes | None:
    """The text as UTF-8, or None if it holds lone surrogates (which JSON can carry as escapes,
    but no payload, header or post can)."""
    try:
        return value.encode()
    except UnicodeEncodeError:
        return None


# --- values --------------------------------------------------------------------------------------

def valid_int(name: str, value: object, lo: int, hi: int) -> int:
    """An int (never a bool, a float or a numeric string) with lo <= value <= hi."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, f"must be an integer, got {type(value).__name__} {_shown(value)}")
    if not lo <= value <= hi:
        raise _fail(name, f"must be between {lo} and {hi}, got {_shown(value)}")
    return value


def valid_user_id(name: str, value: object) -> int:
    return valid_int(name, value, 1, MAX_USER_ID)


def valid_photo_id(name: str, value: object) -> int:
    return valid_int(name, value, 1, MAX_PHOTO_ID)


def valid_user_ids(name: str, value: object, limit: int | None = MAX_NOTIFY_USERS) -> list[int]:
    """A non-empty list of user ids, duplicates dropped (first kept), at most ``limit``."""
    if not isinstance(value, (list, tuple)):
        raise _fail(name, f"must be a list of user ids, got {type(value).__name__}")
    ids = list(dict.fromkeys(valid_user_id(f"{name}[{i}]", v) for i, v in enumerate(value)))
    if not ids:
        raise _fail(name, "must not be empty")
    if limit is not None and len(ids) > limit:
        raise _fail(name, f"has {len(ids)} users, over {limit} per message; split the list")
    return ids


def valid_number(name: str, value: object, lo: float, hi: float) -> float:
    """A finite int or float (never a bool) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, f"must be a number, got {type(value).__name__} {_shown(value)}")
    # int and float compare exactly; an int too large for a float fails here, not in float()
    if (isinstance(value, float) and not math.isfinite(value)) or not lo <= value <= hi:
        raise _fail(name, f"must be between {lo:g} and {hi:g}, got {_shown(value)}")
    return float(value)


def valid_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, f"must be true or false, got {_shown(value)}")
    return value


def valid_text(name: str, value: object, limit: int, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(name, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _fail(name, "must not be empty")
    if len(value) > limit:
        raise _fail(name, f"is {len(value)} characters, over the limit of {limit}")
    if "\x00" in value:
        raise _fail(name, "must not contain NUL characters")
    if _utf8(value) is None:
        raise _fail(name, "must be valid Unicode text, got lone surrogates")
    return value


def valid_token_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not TOKEN_ID.fullmatch(value):
        raise _fail(name, f"must be 1-64 letters, digits, '-' or '_', got {_shown(value)}")
    return value


def valid_header_value(name: str, value: object, limit: int) -> str:
    """Text sent as an HTTP/2 header value (apns-collapse-id): 1 to ``limit`` bytes of UTF-8,
    no control characters (RFC 9113 8.2.1 forbids NUL, CR and LF; a server resets the stream)."""
    if not isinstance(value, str):
        raise _fail(name, f"must be a string of 1 to {limit} bytes, got {_shown(value)}")
    encoded = _utf8(value)
    if encoded is None:
        raise _fail(name, "must be valid Unicode text, got lone surrogates")
    if not 0 < len(encoded) <= limit:
        raise _fail(name, f"must be a string of 1 to {limit} bytes, got {_shown(value)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _fail(name, f"must not contain control characters, got {_shown(value)}")
    return value


def valid_choice(name: str, value: object, allowed: tuple[Any, ...]) -> Any:
    """One of ``allowed``, of its type too: 10.0 is not the priority 10 (APNs would get "10.0"),
    True is not 1."""
    if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
        raise _fail(name, f"must be one of {list(allowed)}, got {value!r}")
    for choice in allowed:
        if isinstance(value, type(choice)) and value == choice:
            return choice
    raise _fail(name, f"must be one of {list(allowed)}, got {_shown(value)}")


def valid_storage_key(name: str, value: object) -> str:
    """A relative key with no '.', '..' or empty segments, so no store can be walked out of."""
    key = valid_text(name, value, MAX_KEY_LEN, required=True)
    if key.startswith("/") or "\\" in key or any(ord(c) < 32 for c in key):
        raise _fail(name, f"must be a relative key with no backslashes, got {_shown(key)}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise _fail(name, f"must not contain '.', '..' or empty segments, got {_shown(key)}")
    return key


def valid_networks(name: str, value: object) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise _fail(name, f"must be a list of networks, got {type(value).__name__}")
    unknown = [n for n in value if not isinstance(n, str) or n not in NETWORKS]
    if unknown:  # checked before dict.fromkeys, which a list or dict in the list would break
        raise _fail(name, f"has unknown network(s) {_shown(unknown)}; known: {list(NETWORKS)}")
    return list(dict.fromkeys(value))


def _string_keys(value: object) -> bool:
    """Every object's keys are strings, however deep (json.dumps would turn 1 into "1")."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _string_keys(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_string_keys(v) for v in value)
    return True


def valid_json_object(name: str, value: object, limit: int) -> dict[str, Any]:
    """A JSON object of at most ``limit`` bytes, returned as the worker will see it (plain dicts
    and lists)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _fail(name, f"must be a JSON object, got {type(value).__name__}")
    try:  # as UTF-8, the way the push payload is encoded: lone surrogates are refused here
        if not _string_keys(value):
            raise ValueError("object keys must be strings")
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False,
                             separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise _fail(name, f"must be plain JSON: {exc}") from None
    if len(encoded) > limit:
        raise _fail(name, f"is {len(encoded)} bytes of JSON, over {limit}")
    plain: dict[str, Any] = json.loads(encoded)
    return plain


def _optional(check: Callable[..., Any], name: str, value: object, *a: Any) -> Any:
    return None if value is None else check(name, value, *a)


def _range(lo: object, hi: object, *, lo_min: int = 0) -> tuple[int, int]:
    """A (lo, hi] follower-id range, as fan-out and deletes cut them."""
    lo_ = valid_int("lo", lo, lo_min, MAX_USER_ID - 1)
    hi_ = valid_int("hi", hi, 1, MAX_USER_ID)
    if lo_ >= hi_:
        raise _fail("hi", f"must be above lo ({lo_}), got {hi_}")
    return lo_, hi_


# --- messages: one checker per task name, with the task's own signature ------------------------

def photos_process(photo_id: object, owner_id: object, original_key: object,
                   caption: object = "", share_to: object = ()) -> dict[str, Any]:
    if isinstance(share_to, str):
        raise _fail("share_to", "must be a list of networks, not a string")
    return {"photo_id": valid_photo_id("photo_id", photo_id),
            "owner_id": valid_user_id("owner_id", owner_id),
            "original_key": valid_storage_key("original_key", original_key),
            "caption": valid_text("caption", caption, MAX_CAPTION),
            "share_to": valid_networks("share_to", share_to)}


def photos_reprocess(photo_id: object) -> dict[str, Any]:
    return {"photo_id": valid_photo_id("photo_id", photo_id)}


def photo_of_owner(photo_id: object, owner_id: object) -> dict[str, Any]:
    return {"photo_id": valid_photo_id("photo_id", photo_id),
            "owner_id": valid_user_id("owner_id", owner_id)}


def feeds_fanout_chunk(photo_id: object, owner_id: object, lo: object, hi: object,
                       active: object) -> dict[str, Any]:
    lo_, hi_ = _range(lo, hi)
    return {**photo_of_owner(photo_id, owner_id), "lo": lo_, "hi": hi_,
            "active": valid_flag("active", active)}


def feeds_delete_chunk(photo_id: object, owner_id: object, lo: object,
                       hi: object) -> dict[str, Any]:
    lo_, hi_ = _range(lo, hi)
    return {**photo_of_owner(photo_id, owner_id), "lo": lo_, "hi": hi_}


def follow_edge(follower_id: object, followee_id: object) -> dict[str, Any]:
    args = {"follower_id": valid_user_id("follower_id", follower_id),
            "followee_id": valid_user_id("followee_id", followee_id)}
    if args["follower_id"] == args["followee_id"]:
        raise _fail("followee_id", "a user cannot follow themselves")
    return args


def one_user(user_id: object) -> dict[str, Any]:
    return {"user_id": valid_user_id("user_id", user_id)}


def feeds_activity(user_id: object, kind: object, actor_id: object, event_id: object,
                   photo_id: object = None) -> dict[str, Any]:
    kind_ = valid_choice("kind", kind, ACTIVITY_KINDS)
    if kind_ in PHOTO_KINDS and photo_id is None:
        raise _fail("photo_id", f"a {kind_} activity needs the photo it is about")
    if kind_ == "follow" and photo_id is not None:
        raise _fail("photo_id", "a follow activity is about no photo; must be null")
    return {"user_id": valid_user_id("user_id", user_id), "kind": kind_,
            "actor_id": valid_user_id("actor_id", actor_id),
            "event_id": valid_token_id("event_id", event_id),
            "photo_id": _optional(valid_photo_id, "photo_id", photo_id)}


def push_notify(user_ids: object, alert: object, notification_id: object, badge: object = None,
                sound: object = None, data: object = None, content_available: object = False,
                priority: object = None, expiration: object = None,
                collapse_id: object = None) -> dict[str, Any]:
    ids = valid_user_ids("user_ids", user_ids)
    available = valid_flag("content_available", content_available)
    if alert is None and badge is None and not available:
        raise _fail("alert", "a notification needs an alert, a badge or content_available")
    if collapse_id is not None:
        valid_header_value("collapse_id", collapse_id, 64)
    return {"user_ids": ids,
            "alert": None if alert is None else valid_text("alert", alert, MAX_ALERT,
                                                           required=True),
            "notification_id": valid_token_id("notification_id", notification_id),
            "badge": _optional(valid_int, "badge", badge, 0, 2**31 - 1),
            "sound": None if sound is None else valid_text("sound", sound, MAX_SOUND,
                                                           required=True),
            "data": valid_json_object("data", {} if data is None else data, MAX_DATA_BYTES),
            "content_available": available,
            "priority": _optional(valid_choice, "priority", priority, PRIORITIES),
            "expiration": _optional(valid_int, "expiration", expiration, 0, 2**63 - 1),
            "collapse_id": collapse_id}


def social_crosspost(photo_id: object, owner_id: object, network: object,
                     caption: object = "") -> dict[str, Any]:
    return {**photo_of_owner(photo_id, owner_id),
            "network": valid_choice("network", network, NETWORKS),
            "caption": valid_text("caption", caption, MAX_CAPTION)}


def webhooks_deliver(photo_id: object, owner_id: object, caption: object = "") -> dict[str, Any]:
    return {**photo_of_owner(photo_id, owner_id),
            "caption": valid_text("caption", caption, MAX_CAPTION)}


def webhooks_replay(subscriber_id: object, since: object) -> dict[str, Any]:
    return {"subscriber_id": valid_int("subscriber_id", subscriber_id, 1, MAX_PHOTO_ID),
            "since": valid_number("since", since, 0, 2**40)}


def no_arguments() -> dict[str, Any]:
    return {}


def batch_feed_rebuild(user_ids: object) -> dict[str, Any]:
    return {"user_ids": valid_user_ids("user_ids", user_ids, MAX_REBUILD_USERS)}


def diag_ping(sent_at: object) -> dict[str, Any]:
    return {"sent_at": valid_number("sent_at", sent_at, 0, 2**40)}


def diag_sleep(seconds: object, marker: object = "") -> dict[str, Any]:
    return {"seconds": valid_number("seconds", seconds, 0, MAX_SLEEP),
            "marker": marker if marker == "" else valid_token_id("marker", marker)}


def diag_flaky(marker: object, fail_times: object, mode: object = "transient",
               retry_after: object = 0) -> dict[str, Any]:
    return {"marker": valid_token_id("marker", marker),
            "fail_times": valid_int("fail_times", fail_times, 0, 1000),
            "mode": valid_choice("mode", mode, FLAKY_MODES),
            "retry_after": valid_number("retry_after", retry_after, 0, 3600)}


Checker = Callable[..., dict[str, Any]]

MESSAGES: dict[str, Checker] = {
    "photos.process": photos_process,
    "photos.reprocess": photos_reprocess,
    "feeds.fanout": photo_of_owner,
    "feeds.fanout_chunk": feeds_fanout_chunk,
    "feeds.follow": follow_edge,
    "feeds.unfollow": follow_edge,
    "feeds.photo_deleted": photo_of_owner,
    "feeds.delete_chunk": feeds_delete_chunk,
    "feeds.rebuild": one_user,
    "feeds.activity": feeds_activity,
    "push.notify": push_notify,
    "social.crosspost": social_crosspost,
    "webhooks.deliver": webhooks_deliver,
    "webhooks.replay": webhooks_replay,
    "batch.deadletter_report": no_arguments,
    "batch.sweep": no_arguments,
    "batch.feed_trim": no_arguments,
    "batch.fanout_sweep": no_arguments,
    "batch.feed_rebuild": batch_feed_rebuild,
    "batch.photo_sweep": no_arguments,
    "diag.ping": diag_ping,
    "diag.sleep": diag_sleep,
    "diag.flaky": diag_flaky,
}


def check(task: str, args: Any = (), kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A message's arguments, bound to the task's checker and normalised, as keyword arguments;
    InvalidArgument naming the first bad one (or the missing or unexpected one)."""
    checker = checker_for(task)
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs or {}, Mapping):
        raise InvalidArgument(f"{task}: arguments must be a list and an object")
    check_size(task, args, kwargs or {})
    try:
        bound = inspect.signature(checker).bind(*args, **dict(kwargs or {}))
    except TypeError as exc:
        raise InvalidArgument(f"{task}: {exc}") from None
    return checker(*bound.args, **bound.kwargs)


def message_size(args: Any, kwargs: Any) -> int | None:
    """Bytes of JSON the arguments are on the wire (ASCII-escaped, as kombu sends them), or None
    if they are not plain JSON (nested too deep, a NaN, an object)."""
    try:
        return len(json.dumps([args, kwargs], allow_nan=False, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError):
        return None


def check_size(task: str, args: Any, kwargs: Any) -> None:
    """InvalidArgument if the arguments are over MAX_MESSAGE_BYTES of JSON: checked before any
    checker runs, so no checker walks megabytes. Values JSON cannot hold are left to the
    checkers, which name the argument."""
    size = message_size(args, kwargs)
    if size is not None and size > MAX_MESSAGE_BYTES:
        raise InvalidArgument(f"{task}: arguments are {size:,} bytes of JSON, over the "
                              f"{MAX_MESSAGE_BYTES:,}-byte limit (pass ids and storage keys, "
                              "not content)")


def checker_for(task: str) -> Checker:
    try:
        return MESSAGES[task]
    except KeyError:
        raise KeyError(f"task {task!r} has no argument checker in "
                       "tasks/core/validation.py") from None
