"""`farm top`'s screen: a snapshot (workers/top_state.py) drawn with rich.

Every name that comes from stored data or the wire (task names, counter names, worker nodes) is
escaped (tasks/core/text.py) and put in a ``Text``, never in a markup string: a worker named
``[blink]x`` or holding a terminal escape shows as those characters, nothing else.
"""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tasks.core.text import safe
from workers.top_state import Snapshot

NAME_WIDTH = 60  # characters of a stored name shown at most
MAX_WORKERS = 40  # rows; the rest are counted
MAX_TASKS = 25


def _name(text: str) -> Text:
    return Text(safe(text, NAME_WIDTH))


def _rate(value: float | None) -> str:
    if value is None:
        return "…"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _oldest(depth: int, age: float | None) -> Text:
    if not depth:
        return Text("-", style="dim")
    if age is None:
        return Text("unknown", style="dim")
    return Text(_age(age), style="bold red" if age >= 60 else "")


def _percent(value: float | None) -> Text:
    if value is None:
        return Text("…")
    return Text(f"{value:.1%}", style="bold red" if value >= 0.05 else "")


def header(snap: Snapshot) -> Text:
    up = sum(w["alive"] for w in snap["workers"])
    new = snap["deadletters_new"]
    line = Text()
    line.append("farm top", style="bold")
    line.append(f"  {time.strftime('%H:%M:%S', time.localtime(snap['time']))}")
    line.append(f"   workers {up} up")
    held = snap["inflight"]
    line.append(f"   in flight {'-' if held is None else held}")
    line.append("   failure rate ")
    line.append_text(_percent(snap["failure_rate"]))
    line.append(f"   dead letters {snap['deadletters']:,}")
    if new:
        line.append(f" ({new:+d})", style="bold red" if new > 0 else "")
    return line


def queues_table(snap: Snapshot) -> Table:
    t = Table(title="queues", title_justify="left", expand=False, box=None, padding=(0, 2))
    t.add_column("queue")
    for col in ("waiting", "in/s", "out/s"):
        t.add_column(col, justify="right")
    t.add_column("oldest", justify="right")
    for name, q in snap["queues"].items():
        moving = bool(q["in_per_s"] or q["out_per_s"])
        t.add_row(_name(name), f"{q['depth']:,}", _rate(q["in_per_s"]), _rate(q["out_per_s"]),
                  _oldest(q["depth"], q["oldest_age_s"]),
                  style="bold" if q["depth"] else "" if moving else "dim")  # idle: dimmed
    return t


def tasks_table(snap: Snapshot) -> Table:
    t = Table(title="tasks", title_justify="left", box=None, padding=(0, 2))
    t.add_column("task")
    for col in ("ok/s", "retry/s", "dead/s", "mean ms", "ok", "retry", "dead"):
        t.add_column(col, justify="right")

    def busy(item: tuple[str, object]) -> tuple[float, str]:
        view = snap["tasks"][item[0]]
        return (-(view["ok_per_s"] or 0) - (view["retry_per_s"] or 0), item[0])

    rows = sorted(snap["tasks"].items(), key=busy)
    for name, v in rows[:MAX_TASKS]:
        mean = "-" if v["mean_ms"] is None else f"{v['mean_ms']:,.1f}"
        t.add_row(_name(name), _rate(v["ok_per_s"]), _rate(v["retry_per_s"]),
                  Text(_rate(v["deadletter_per_s"]),
                       style="bold red" if v["deadletter_per_s"] else ""),
                  mean, f"{v['ok']:,}", f"{v['retry']:,}", f"{v['deadletter']:,}")
    if len(rows) > MAX_TASKS:
        t.add_row(Text(f"... {len(rows) - MAX_TASKS} more", style="dim"))
    return t


def workers_table(snap: Snapshot) -> Table | Text:
    if not snap["workers"]:
        return Text("workers: none heard from yet (they beat every 2 s)", style="dim")
    t = Table(title="workers", title_justify="left", box=None, padding=(0, 2))
    t.add_column("node")
    t.add_column("status")
    for col in ("active", "processed", "load", "heartbeat"):
        t.add_column(col, justify="right")
    # Up first, then by name.
    rows = sorted(snap["workers"], key=lambda w: (not w["alive"], w["node"]))
    for w in rows[:MAX_WORKERS]:
        load = "-" if not w["loadavg"] else " ".join(f"{x:.2f}" for x in w["loadavg"])
        t.add_row(_name(w["node"]),
                  Text("up", style="green") if w["alive"] else Text("down", style="bold red"),
                  "-" if w["active"] is None else str(w["active"]),
                  "-" if w["processed"] is None else f"{w['processed']:,}",
                  load,
                  "-" if w["heartbeat_age_s"] is None else _age(w["heartbeat_age_s"] or 0.0),
                  style="" if w["alive"] else "dim")
    if len(rows) > MAX_WORKERS:
        t.add_row(Text(f"... {len(rows) - MAX_WORKERS} more", style="dim"))
    return t


def render(snap: Snapshot, *, footer: bool = False) -> RenderableType:
    parts: list[RenderableType] = [header(snap), Text(), queues_table(snap), Text(),
                                   workers_table(snap), Text(), tasks_table(snap)]
    if footer:
        parts += [Text(), Text("q: quit", style="dim")]
    return Group(*parts)
