"""batch.*: beat's tasks for the maintenance jobs, each a run under the job's lock, as
`farm batch NAME` does in-process."""

from __future__ import annotations

from config.settings import get_settings
from tasks.core.base import farm_task
from tasks.core.jobs import Result, run_job
from tasks.core.redis import data_redis
from tasks.maintenance.jobs import DEADLETTER_REPORT, SWEEP


@farm_task("batch.deadletter_report", max_retries=0)
def deadletter_report() -> Result:
    return run_job(DEADLETTER_REPORT, data_redis(), get_settings())


@farm_task("batch.sweep", max_retries=0)
def sweep() -> Result:
    return run_job(SWEEP, data_redis(), get_settings())
