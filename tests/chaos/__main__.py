"""`python -m tests.chaos [--short] [--modes a,b,...] [--seed N] [--keep] [--broker redis|amqp]`
(`make chaos`, `make chaos BROKER=amqp`).

Runs each mode in a process of its own (tests/chaos/modes.py), on a Redis broker of its own or
(``--broker amqp``) a vhost of its own on the machine's RabbitMQ; prints one line per mode as it
ends, with the details that need a look (warm stops, duplicates and what explains each, lost
tasks), and as the last line the summary. Exit status 1 on any loss, any duplicate the documented
window does not explain, anything left undrained, or a harness error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.chaos.broker import BROKERS
from tests.chaos.modes import MODES

REPO = Path(__file__).resolve().parents[2]
MODE_TIMEOUT = {True: 240.0, False: 600.0}  # seconds a mode may take, short or full, at most


def n(x: float) -> str:
    return f"{x:,.0f}"


def mode_line(r: dict[str, Any]) -> str:
    mode = f"{r['mode']} on {r.get('broker', 'redis')}"
    if "error" in r:
        return f"{mode}: harness error: {r['error']}: FAIL"
    if r["mode"] == "push":
        what = (f"{r['notifications']} notifications, {n(r['pushes_expected'])} pushes expected, "
                f"{r['pushes_lost']} lost, {r['pushes_duplicated']} duplicated "
                f"({r['dups_in_window']} in the window, {r['dups_unexplained']} unexplained)")
    else:
        what = (f"{r['posts']} posts, {n(r['entries_expected'])} entries expected, "
                f"{r['missing']} missing, {r['duplicated']} duplicated, {r['extra']} extra")
        if r["mode"] == "photos":
            what = f"{r['photos'] - r['photos_bad']}/{r['photos']} photos ready, " + what
    kills = r.get("kills", {})
    struck = ", ".join(f"{v} {k}" for k, v in sorted(kills.items())) or "none"
    parts = [what,
             f"{n(r['tasks_sent'])} tasks sent, {r['tasks_lost']} lost, "
             f"{r.get('ran_twice', 0)} ran twice",
             f"{r['dead_letters']} dead letters, {r['replayed']} replayed",
             f"{sum(kills.values())} kills ({struck}), {r['restarts']} restarts"]
    stops = r.get("stops", {})
    if stops.get("stops"):
        parts.append(f"{stops['stops']} warm stops {stops['min']:.1f}/{stops['median']:.1f}/"
                     f"{stops['max']:.1f} s min/median/max, {stops['cut']} cut short")
    if r.get("broker_down"):
        parts.append(f"broker down {r['broker_down']:.2f} s")
    if r.get("connections_closed"):
        parts.append(f"{r['connections_closed']:.0f} broker connections closed at once")
    verdict = "PASS" if r["passed"] else "FAIL"
    return f"{mode}: " + "; ".join(parts) + f"; {r['seconds']:.0f} s: {verdict}"


def details(r: dict[str, Any]) -> list[str]:
    out = []
    if r.get("left"):
        out.append(f"  not drained: {r['left']}")
    if r.get("chunks_listed") or r.get("chunks_resent"):
        out.append(f"  fan-out ledger after the drain: {r['chunks_listed']} chunk(s) listed, "
                   f"{r['chunks_resent']} re-sent by the sweep")
    if r.get("pushes_refused"):
        out.append(f"  requests the stand-in answered other than 200 (retried): "
                   f"{r['pushes_refused']}")
    if r.get("send_failures"):
        out.append(f"  sends refused while the broker was down, then sent again: "
                   f"{r['send_failures']}")
    if r.get("dl_reasons"):
        out.append(f"  dead letters: {r['dl_reasons']}; left after replay: "
                   f"{r['dead_letters_left']}")
    out += [f"  dead-lettered: {line}" for line in r.get("dl_history", [])]
    if r.get("lost_by_task"):
        out.append(f"  tasks lost by task: {r['lost_by_task']}")
    if r.get("pending"):
        out.append(f"  messages still held by the broker: {r['pending']}")
    if r.get("stop_list"):
        out.append("  warm stops, s from SIGTERM to exit: " + ", ".join(
            f"{node} {t:.1f}{' CUT SHORT' if cut else ''}" for node, t, cut in r["stop_list"]))
    if r.get("ran_twice") or r.get("restored"):
        out.append(f"  redelivered: {r.get('restored', 0)} message(s) put back on a queue (their "
                   f"worker stopped or died holding them), {r.get('ran_twice', 0)} ran to ok "
                   "twice (safe: every task is idempotent)")
    if r.get("orphans"):
        out.append(f"  pool children of killed parents still alive at the end: {r['orphans']}")
    out += r.get("duplicates", [])
    out += [f"  {line}" for line in r.get("examples", []) + r.get("problems", [])]
    return out


def run_one(mode: str, opts: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    result_path = scratch / f"{mode}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    broker = getattr(opts, "broker", "redis")
    argv = [sys.executable, "-m", "tests.chaos.modes", mode, "short" if opts.short else "full",
            str(opts.seed), str(result_path), "keep" if opts.keep else "drop", broker]
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True)
    try:
        proc.wait(MODE_TIMEOUT[opts.short])
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        stop(proc)  # SIGTERM: the mode stops its workers and servers on the way out
        if isinstance(exc, KeyboardInterrupt):
            raise
    if result_path.exists():
        result: dict[str, Any] = json.loads(result_path.read_text())
        return result
    took = time.monotonic() - started
    return {"mode": mode, "broker": broker, "passed": False, "seconds": took,
            "error": f"no result (exit {proc.returncode}, after {took:.0f} s)"}


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summary(results: list[dict[str, Any]], seconds: float, broker: str = "redis") -> str:
    def total(key: str) -> int:
        return sum(int(r.get(key) or 0) for r in results)

    dups, window = total("pushes_duplicated"), total("dups_in_window")
    explained = ("all in the documented window" if dups == window
                 else f"{dups - window} NOT in the documented window")
    verdict = "PASS" if results and all(r["passed"] for r in results) else "FAIL"
    errors = sum("error" in r for r in results)
    return (f"chaos on {broker}: {len(results)} modes in {seconds:.0f} s, "
            f"{total('missing')} entries missing, {total('duplicated')} duplicated, "
            f"{total('pushes_lost')} pushes lost, "
            f"{dups} pushes duplicated ({explained}), {total('tasks_lost')} tasks lost, "
            f"{total('replayed')} dead letters replayed"
            + (f", {errors} harness errors" if errors else "") + f": {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--short", action="store_true", help="a few seconds of kills, small sizes")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--broker", choices=BROKERS, default="redis",
                        help="redis: a server per mode (default); amqp: a vhost per mode on the "
                             "machine's RabbitMQ (127.0.0.1:5672, rabbitmqctl)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each mode's directory (servers' data, worker logs)")
    opts = parser.parse_args(argv)
    modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    if opts.broker == "amqp":
        from tests.chaos.rabbit import delete_leftovers, unavailable

        why = unavailable()
        if why:
            print(f"chaos on amqp: cannot run: {why}: FAIL", flush=True)
            return 1
        for vhost in delete_leftovers():
            print(f"deleted {vhost}, left by a chaos run that was killed", flush=True)
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="farm-chaos-") as scratch:
        for mode in modes:
            r = run_one(mode, opts, Path(scratch))
            results.append(r)
            print(mode_line(r), flush=True)
            for line in details(r):
                print(line, flush=True)
    print(summary(results, time.monotonic() - started, opts.broker), flush=True)
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
