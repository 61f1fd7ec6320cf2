"""One argument check on both sides: whatever the enqueue API refuses, a task refuses at its entry,
and whatever the API sends, a task accepts unchanged (tasks/core/validation.py).

Property-based (hypothesis): each enqueue function is called with values from a broad strategy
(edge integers, bools, floats with nan/inf, numeric strings, None, long and NUL-bearing strings,
lone surrogates, lists, dicts) mixed with valid ones, publishing replaced by a fake that captures
the message, so no broker is needed. Then the same raw values, as a message, go to the task
entry's check; and every checker in MESSAGES is fed arbitrary JSON and must refuse with
InvalidArgument, never leak a TypeError, KeyError, OverflowError, ...
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.celery_app import TASK_MODULES, app
from config.queues import ROUTES
from tasks import enqueue
from tasks.core import validation
from tasks.core.base import FarmTask
from tasks.core.validation import (
    ACTIVITY_KINDS,
    MAX_PHOTO_ID,
    MAX_USER_ID,
    MESSAGES,
    NETWORKS,
    PRIORITIES,
    InvalidArgument,
    check,
)

for _module in TASK_MODULES:  # the worker side: every farm task registered with the app
    importlib.import_module(_module)

# Modest counts: the whole file runs in seconds. No example database: nothing written to the tree.
PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
PER_TASK = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --- strategies ----------------------------------------------------------------------------------

EDGE_INTS = [0, 1, -1, 2, 5, 10, 64, 100, 101, 1000, 1001, 2**31 - 1, 2**31, 2**40, 2**40 + 1,
             MAX_USER_ID - 1, MAX_USER_ID, MAX_USER_ID + 1, MAX_PHOTO_ID, MAX_PHOTO_ID + 1,
             2**64, 2**70, -(2**63), -(2**70), 10**400]
EDGE_FLOATS = [1.0, 5.0, 10.0, 0.5, -0.0, 2.0**53, 1e300, math.nan, math.inf, -math.inf]
ODD_STRINGS = ["", " ", "\t\n", "twitter", "facebook", "Twitter", "myspace", "like", "follow",
               "abc", "1", "-1", "1e3", "0x1f", "nan", "null", "originals/1.jpg", "../x", "a/../b",
               "./a", "/abs", "a//b", "a/", "a\\b", "x\x00y", "\x00", "\ud800", "a\ud83db",
               "a\r\nb", " c ", "é", "🙂", "default", "a" * 64, "a" * 65, "é" * 33, "x" * 513,
               "x" * 1001, "x" * 2201, "é" * 1100]
# Every edge at once: the deterministic sweeps put each of these in each argument of a valid
# message; the strategies below draw them often.
EDGE_CONTAINERS: list[Any] = [
    [], [1], [1, 1], ["a", "b"], [-1], [0], [True], [1.5], [None], [[1]], [{}], [["twitter"]],
    ["myspace"], ["twitter", "twitter"], ["twitter", None], [MAX_USER_ID + 1], [10**400],
    list(range(1, 101)), list(range(1, 102)), list(range(1, 1002)), list(range(1, 10001)),
    {}, {"a": 1}, {"a": math.nan}, {"a": "\ud800"}, {"x": "y" * 2000}, {"a": {"b": [1, {}]}},
]
NASTY: list[Any] = [*EDGE_INTS, *EDGE_FLOATS, True, False, None, *ODD_STRINGS, *EDGE_CONTAINERS]
# Python-only values: an int too long to print (over 4300 digits) or a dict with an int key can
# come from the web tier, never from a JSON message; still refused with InvalidArgument.
PYTHON_ONLY: list[Any] = [2**14300, -(2**14300), [2**14300], {"n": 2**14300}, {1: 2},
                         {"a": {1: 2}}, {"a": (1, 2)}, ("twitter",), (1, 2)]

ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(),
                 st.integers(min_value=-(2**80), max_value=2**80),
                 st.integers(min_value=2**1023, max_value=2**1100))  # beyond any double
floats = st.one_of(st.floats(), st.sampled_from(EDGE_FLOATS))  # nan, inf and -0.0 included
numeric_strings = st.one_of(ints.map(str), floats.map(repr))
# Lengths around every text limit in validation.py (64, 512, 1000, 2200), and far past them.
long_strings = st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "🙂", " ", "/"]),
                         st.sampled_from([32, 63, 64, 65, 512, 513, 1000, 1001, 2200, 2201, 5000]))
strings = st.one_of(st.text(max_size=12), st.sampled_from(ODD_STRINGS), long_strings,
                    st.text(max_size=6).map(lambda s: s + "\x00"),
                    st.text(st.characters(categories=["Cs", "Cc", "L"]), max_size=6))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, numeric_strings, strings)
# Arbitrary JSON-like values (what a broker message can hold), nested a little.
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=8)
# What a confused caller may pass for any argument: everything, and the edges often.
broad = st.one_of(ints, st.sampled_from([*EDGE_FLOATS, True, False, None]),
                  st.sampled_from(ODD_STRINGS), st.sampled_from(EDGE_CONTAINERS),
                  scalars, json_values,
                  st.lists(st.one_of(ints, strings, st.none(), st.booleans()), max_size=5),
                  st.lists(st.sampled_from([*NETWORKS, "myspace", "Twitter", ""]), max_size=4),
                  st.lists(st.one_of(st.sampled_from(NETWORKS), json_values), min_size=1,
                           max_size=3))
python_only = st.sampled_from(PYTHON_ONLY)

photo_ids = st.integers(min_value=1, max_value=MAX_PHOTO_ID)
user_ids = st.integers(min_value=1, max_value=MAX_USER_ID)
tokens = st.from_regex(r"[0-9A-Za-z_-]{1,64}", fullmatch=True)
keys = st.one_of(st.sampled_from(["originals/1.jpg", "a", "originals/x/y.jpeg"]),
                 st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9._-]{1,8}){0,3}", fullmatch=True))
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

# Valid (or at least plausible) values per parameter name: mixed with `broad`, so that a message
# gets past its first arguments and the later checks are reached too.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "photo_id": photo_ids,
    "owner_id": user_ids,
    "original_key": keys,
    "caption": st.text(max_size=40),
    "share_to": st.lists(st.sampled_from(NETWORKS), max_size=3),
    "lo": st.integers(min_value=0, max_value=5000),
    "hi": st.integers(min_value=1, max_value=MAX_USER_ID),
    "active": st.booleans(),
    "follower_id": user_ids,
    "followee_id": user_ids,
    "user_id": user_ids,
    "kind": st.sampled_from(ACTIVITY_KINDS),
    "actor_id": user_ids,
    "event_id": tokens,
    "user_ids": st.lists(user_ids, min_size=1, max_size=6),
    "alert": st.one_of(st.none(), st.text(min_size=1, max_size=40)),
    "notification_id": tokens,
    "badge": st.one_of(st.none(), st.integers(min_value=0, max_value=2**31 - 1)),
    "sound": st.one_of(st.none(), st.sampled_from(["default", "ping.aiff"])),
    "data": st.one_of(st.none(), json_objects),
    "content_available": st.booleans(),
    "priority": st.one_of(st.none(), st.sampled_from(PRIORITIES)),
    "expiration": st.one_of(st.none(), st.integers(min_value=0, max_value=2**63 - 1)),
    "collapse_id": st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    "network": st.sampled_from(NETWORKS),
    "subscriber_id": photo_ids,
    "since": st.floats(min_value=0, max_value=2**40),
    "sent_at": st.floats(min_value=0, max_value=2**40),
    "seconds": st.floats(min_value=0, max_value=600),
    "marker": tokens,
    "fail_times": st.integers(min_value=0, max_value=1000),
    "mode": st.sampled_from(validation.FLAKY_MODES),
    "retry_after": st.floats(min_value=0, max_value=3600),
}


@st.composite
def mixed(draw: st.DrawFn, params: list[str], *, python: bool = False) -> dict[str, Any]:
    """Plausible values for every parameter, then a few of them (none, one, some, or all)
    replaced by broad ones."""
    values = {p: draw(PLAUSIBLE[p]) for p in params}
    count = min(len(params), draw(st.sampled_from([0, 1, 1, 1, 2, 3, len(params)])))
    for p in draw(st.permutations(params))[:count]:
        values[p] = draw(st.one_of(broad, python_only) if python else broad)
    return values


# --- the two sides -------------------------------------------------------------------------------

Sent = list[tuple[str, dict[str, Any], str]]


@contextmanager
def publishing_captured() -> Iterator[Sent]:
    """The enqueue API with its publish replaced: what it would send is captured, nothing is."""
    sent: Sent = []

    class Result:
        id = "captured"

    def send_task(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Result:
        assert not args, "the enqueue API sends keyword arguments only"
        sent.append((name, kwargs, options["queue"]))
        return Result()

    original = app.__dict__.get("send_task")
    app.send_task = send_task  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        if original is None:
            del app.send_task
        else:
            app.send_task = original  # type: ignore[method-assign]


def at_task_entry(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the task's own entry does with a message: FarmTask.__call__ binds it with
    validation.check(self.name, args, kwargs) and runs the function with the result."""
    task = app.tasks[name]
    assert isinstance(task, FarmTask) and task.name == name
    checked = check(task.name, (), kwargs)
    inspect.signature(task.run).bind(**checked)  # the function takes what the check returns
    return checked


def strict_json(value: Any) -> str:
    return json.dumps(value, allow_nan=False, sort_keys=True)


def as_message(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The web tier's Python values as a JSON message carries them (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in kwargs.items()}


def argument_named(exc: BaseException) -> str:
    """The argument an InvalidArgument names: "user_ids[3]: must be ..." -> "user_ids"."""
    return str(exc).split(":", 1)[0].split("[", 1)[0]


def agree(name: str, send: Callable[[], str], message: dict[str, Any],
          generated: tuple[str, ...] = ()) -> None:
    """``send`` (an enqueue call) and ``message`` (the same values as a raw message) are refused
    alike, naming the same argument, or accepted alike with a message that round-trips.
    ``generated``: arguments the API makes itself (event and notification ids)."""
    with publishing_captured() as sent:
        try:
            send()
        except ValueError as exc:
            refused: BaseException | None = exc
        else:
            refused = None

    if refused is not None:
        assert isinstance(refused, InvalidArgument), f"enqueue leaked {refused!r}"
        assert not sent, "nothing may be sent once the API refused"
        with pytest.raises(InvalidArgument) as direct:
            check(name, (), message)
        with pytest.raises(InvalidArgument) as entry:
            at_task_entry(name, message)
        assert argument_named(direct.value) == argument_named(refused), (refused, direct.value)
        assert str(entry.value) == str(direct.value)
        return

    [(sent_name, published, queue)] = sent
    assert (sent_name, queue) == (name, ROUTES[name])
    # The published message is plain JSON and a fixed point of the check: a worker runs it as is.
    assert json.loads(strict_json(published)) == published
    again = check(name, (), published)
    assert strict_json(again) == strict_json(published)
    assert strict_json(at_task_entry(name, published)) == strict_json(published)
    # And the raw values, sent as a message by anyone else, are accepted and mean the same.
    raw = {**message, **{k: published[k] for k in generated}}
    assert strict_json(at_task_entry(name, raw)) == strict_json(published)


# --- properties: enqueue API == task entry ------------------------------------------------------

# Task name -> (enqueue function, its parameters, arguments the function makes itself).
ENQUEUE: dict[str, tuple[Callable[..., str], list[str], tuple[str, ...]]] = {
    "photos.process": (enqueue.photo_uploaded,
                       ["photo_id", "owner_id", "original_key", "caption", "share_to"], ()),
    "feeds.follow": (enqueue.user_followed, ["follower_id", "followee_id"], ()),
    "feeds.unfollow": (enqueue.user_unfollowed, ["follower_id", "followee_id"], ()),
    "feeds.photo_deleted": (enqueue.photo_deleted, ["photo_id", "owner_id"], ()),
    "feeds.rebuild": (enqueue.rebuild_feed, ["user_id"], ()),
    "feeds.activity": (enqueue.activity, ["user_id", "kind", "actor_id", "photo_id"],
                       ("event_id",)),
    "push.notify": (enqueue.notify_users,
                    ["user_ids", "alert", "badge", "sound", "data", "content_available",
                     "priority", "expiration", "collapse_id"], ("notification_id",)),
}

# One valid value per parameter name: the base message every sweep spoils one argument of.
VALID: dict[str, Any] = {
    "photo_id": 17, "owner_id": 42, "original_key": "originals/17.jpg", "caption": "hi",
    "share_to": ["twitter"], "lo": 0, "hi": 5000, "active": True, "follower_id": 1002,
    "followee_id": 1001, "user_id": 1002, "kind": "like", "actor_id": 1003, "event_id": "e1",
    "user_ids": [1002, 1003], "alert": "hello", "notification_id": "n1", "badge": 1,
    "sound": "default", "data": {"photo": 17}, "content_available": False, "priority": 10,
    "expiration": 0, "collapse_id": "c1", "network": "twitter", "subscriber_id": 7,
    "since": 1700000000.0, "sent_at": 1700000000.0, "seconds": 0.01, "marker": "m1",
    "fail_times": 0, "mode": "transient", "retry_after": 0,
}


def test_every_parameter_has_a_valid_value_and_a_strategy() -> None:
    every = {p for name in MESSAGES for p in parameters(name)}
    assert every <= set(VALID) and every <= set(PLAUSIBLE), "add the new parameter's values"


def through_the_api(name: str, values: dict[str, Any]) -> None:
    send, _, generated = ENQUEUE[name]
    message = {**as_message(values), **{g: uuid.uuid4().hex for g in generated}}
    agree(name, lambda: send(**values), message, generated)


def test_the_api_covers_every_enqueue_function() -> None:
    public = {n for n in enqueue.__all__ if callable(getattr(enqueue, n))
              and n not in ("message", "InvalidArgument")}
    assert public == {fn.__name__ for fn, _, _ in ENQUEUE.values()}
    for name, (send, params, generated) in ENQUEUE.items():
        assert list(inspect.signature(send).parameters) == params, name
        assert set(params) | set(generated) <= set(parameters(name)), name


@pytest.mark.parametrize("name", sorted(ENQUEUE))
@PROPERTY
@given(data=st.data())
def test_enqueue_and_the_task_entry_accept_and_refuse_the_same_values(
        name: str, data: st.DataObject) -> None:
    through_the_api(name, data.draw(mixed(ENQUEUE[name][1], python=True), label="arguments"))


@pytest.mark.parametrize("name", sorted(ENQUEUE))
def test_every_edge_value_in_every_argument_agrees(name: str) -> None:
    params = ENQUEUE[name][1]
    base = {p: VALID[p] for p in params}
    through_the_api(name, base)
    for p in params:
        for value in [*NASTY, *PYTHON_ONLY]:
            through_the_api(name, {**base, p: value})


# --- property: every checker refuses with InvalidArgument, and nothing else ---------------------

def parameters(name: str) -> list[str]:
    return list(inspect.signature(MESSAGES[name]).parameters)


@st.composite
def json_message(draw: st.DrawFn, name: str) -> tuple[list[Any], dict[str, Any]]:
    """A message for ``name`` as anyone could put on the broker: the task's real parameters
    (plausible values, a few of them replaced by arbitrary JSON), sometimes some missing,
    sometimes extra keys, sometimes positional."""
    params = parameters(name)
    kwargs = draw(mixed(params))
    if params and draw(st.integers(0, 5)) == 0:
        for p in draw(st.lists(st.sampled_from(params), unique=True, min_size=1)):
            del kwargs[p]
    if draw(st.integers(0, 5)) == 0:
        kwargs.update(draw(st.dictionaries(st.text(max_size=8), json_values, min_size=1,
                                           max_size=2)))
    args: list[Any] = []
    if draw(st.integers(0, 5)) == 0:  # positional, as diag.ping and diag.flaky are sent
        args = draw(st.lists(json_values, max_size=len(params) + 1))
    return args, kwargs


def refused_or_fixed_point(name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """check refuses with one InvalidArgument line naming an argument, or returns plain JSON that
    it would return unchanged; never another exception."""
    try:
        checked = check(name, args, kwargs)
    except InvalidArgument as exc:
        text = str(exc)
        assert text and "\n" not in text, "one line"
        assert argument_named(exc) in (*parameters(name), name), text
    else:
        assert json.loads(strict_json(checked)) == checked
        assert strict_json(check(name, (), checked)) == strict_json(checked)


@pytest.mark.parametrize("name", sorted(MESSAGES))
@PER_TASK
@given(data=st.data())
def test_checkers_refuse_arbitrary_json_with_invalid_argument_only(
        name: str, data: st.DataObject) -> None:
    refused_or_fixed_point(name, *data.draw(json_message(name), label="message"))


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_checkers_refuse_every_edge_value_with_invalid_argument_only(name: str) -> None:
    params = parameters(name)
    base = {p: VALID[p] for p in params}
    assert check(name, (), base) == base
    for p in params:
        for value in NASTY:
            refused_or_fixed_point(name, [], {**base, p: value})
        missing = {k: v for k, v in base.items() if k != p}
        refused_or_fixed_point(name, [], missing)
        refused_or_fixed_point(name, [base[p]], base)  # given twice
    refused_or_fixed_point(name, [], {**base, "unexpected": 1})
    refused_or_fixed_point(name, list(base.values()), {})  # positional
    for junk in ([1], "x", None, {"a": 1}):
        refused_or_fixed_point(name, junk, base)  # type: ignore[arg-type]
        refused_or_fixed_point(name, [], junk)  # type: ignore[arg-type]


# --- the bugs the issue named (each failed before the restructuring) ---------------------------

def test_user_followed_refuses_a_user_id_over_2_53() -> None:
    # Accepted by the API and refused by the workers before: a follower id must be an exact
    # sorted-set score.
    with publishing_captured() as sent, pytest.raises(ValueError, match=r"^follower_id: "):
        enqueue.user_followed(2**60, 5)
    assert not sent
    with pytest.raises(InvalidArgument, match=r"^follower_id: must be between 1 and "):
        check("feeds.follow", (), {"follower_id": 2**60, "followee_id": 5})


PHOTO = {"photo_id": 17, "owner_id": 42, "original_key": "originals/17.jpg", "caption": "",
         "share_to": []}
PUSH = {"alert": "hi", "notification_id": "n1"}


@pytest.mark.parametrize(("name", "kwargs", "error"), [
    ("photos.process", {**PHOTO, "photo_id": 2**70},
     f"photo_id: must be between 1 and {MAX_PHOTO_ID}, got {2**70}"),
    ("photos.process", {**PHOTO, "owner_id": "abc"}, "owner_id: must be an integer, got str"),
    ("photos.process", {**PHOTO, "share_to": ["myspace"]},
     "share_to: has unknown network(s) ['myspace']"),
    ("push.notify", {**PUSH, "user_ids": ["a", "b"]}, "user_ids[0]: must be an integer"),
    ("push.notify", {**PUSH, "user_ids": [3, -1]}, "user_ids[1]: must be between 1 and"),
    ("push.notify", {**PUSH, "user_ids": list(range(1, 10001))},
     "user_ids: has 10000 users, over 100 per message"),
])
def test_the_task_entry_refuses_what_the_issue_named(
        name: str, kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        at_task_entry(name, kwargs)
    assert str(exc.value).startswith(error)
    assert isinstance(exc.value, ValueError)  # what the web tier catches


@pytest.mark.parametrize(("name", "kwargs", "argument"), [
    # Each leaked another exception (or was accepted) before validation.py was fixed.
    ("photos.process", {**PHOTO, "share_to": [["twitter"]]}, "share_to"),  # TypeError
    ("webhooks.replay", {"subscriber_id": 7, "since": 10**400}, "since"),  # OverflowError
    ("diag.ping", {"sent_at": 10**400}, "sent_at"),
    ("push.notify", {**PUSH, "user_ids": [1], "collapse_id": "\ud800"}, "collapse_id"),
    ("push.notify", {**PUSH, "user_ids": [1], "collapse_id": "a\r\nb"}, "collapse_id"),
    ("push.notify", {**PUSH, "user_ids": [1], "priority": 10.0}, "priority"),  # "10.0" to APNs
    ("push.notify", {**PUSH, "user_ids": [1], "alert": "hi \ud83d"}, "alert"),
    ("push.notify", {**PUSH, "user_ids": [1], "data": {"k": "\udc00"}}, "data"),
    ("photos.process", {**PHOTO, "caption": "\ud800"}, "caption"),
    ("feeds.rebuild", {"user_id": 2**14300}, "user_id"),  # too long to print: ValueError
])
def test_values_no_task_can_run_with_are_refused_naming_the_argument(
        name: str, kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check(name, (), kwargs)
    assert argument_named(exc.value) == argument


def test_every_route_and_every_registered_task_has_a_checker() -> None:
    assert set(ROUTES) <= set(MESSAGES), "routed tasks without a checker in validation.py"
    assert set(MESSAGES) <= set(ROUTES), "checkers for no routed task (a renamed task?)"
    farm_tasks = {name for name in app.tasks if not name.startswith("celery.")}
    assert farm_tasks, "no farm task registered"
    assert farm_tasks <= set(MESSAGES), "registered tasks without a checker in validation.py"
    for name in farm_tasks:
        assert isinstance(app.tasks[name], FarmTask), name
