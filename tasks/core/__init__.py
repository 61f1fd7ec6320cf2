"""Shared machinery every domain uses: the task base, errors, backoff, timing, dead letters, ids,
metrics, locks, batch-job running, argument validation, Redis scripts and per-process clients."""
