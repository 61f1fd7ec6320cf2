"""The farm's chaos suite: `make chaos`, or `python -m tests.chaos [--short] [--modes a,b]
[--broker redis|amqp]`.

Each mode runs in a process of its own (so the farm's settings and Celery app in it point at that
mode's own servers): a broker of its own (a Redis server with an append-only file synced before
every reply, or a vhost on the machine's RabbitMQ with its firehose on), a data server, real
`farm worker` processes kept alive by a supervisor loop, and a seeded killer. After
the kills stop the farm drains, the fan-out ledger is swept, dead letters are replayed, and the end
state is checked against what was sent. See README, "Chaos".

- ``farm.py``: the servers, the worker slots, the supervisor loop, the killer;
- ``broker.py``: the broker either kind, what it still holds, and waiting until it holds
  nothing (drained); the Redis one; ``rabbit.py``: the RabbitMQ one (a vhost of the mode's own);
- ``audit.py``: every message the broker accepted against every task that ran to ok (from the
  workers' own timing lines): tasks lost; what was accepted comes from the Redis broker's
  append-only file (``aof.py``) or RabbitMQ's firehose (``firehose.py``);
- ``modes.py``: one mode start to finish: servers, kills while work is sent, drain, ledger sweep,
  dead-letter replay, checks;
- ``scenarios.py`` (fan-out, photos), ``feeds.py`` (the graph, every feed checked) and
  ``push.py`` (every delivery checked, each duplicate explained or not): what each mode sends
  and what it checks;
- ``standin.py``: the APNs stand-in in a process of its own, with its records;
- ``__main__.py``: the command line, one line per mode and the summary;
- ``test_chaos_short.py``: the short version, in `make test`.
"""
