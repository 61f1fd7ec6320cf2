"""A real io worker SIGKILLed between the network's answer and the post record
(PHOTOFARM_FAULT_POINT=social.answered): the redelivered message, run by another worker, finds
the post (the Page's recent photos; X's duplicate refusal) and records it. One post, not two."""

from __future__ import annotations

import pytest
import redis

from config.celery_app import app
from config.settings import get_settings
from tasks.social.accounts import LinkedAccounts
from tasks.social.posts import PostRecords
from tests.social.conftest import new_photo_id, store_full
from tests.support.workers import FAST_REDELIVERY, WorkerFactory, wait_for
from workers.demo_social import SocialStandIn

pytestmark = pytest.mark.integration

FAST = {**FAST_REDELIVERY, "FARM_INFLIGHT_HEARTBEAT": "5"}
OWNER = 42


@pytest.mark.parametrize("network", ["twitter", "facebook"])
def test_a_worker_killed_after_the_answer_leaves_one_post(
        standin: SocialStandIn, data: redis.Redis, workers: WorkerFactory, network: str) -> None:
    accounts = LinkedAccounts(data, get_settings())
    accounts.link_twitter(OWNER, *standin.add_x_user("anna"), handle="anna")
    accounts.link_facebook(OWNER, *standin.add_page("Anna's photos"))
    photo = new_photo_id()
    store_full(photo)
    env = {**FAST, **standin.env()}

    doomed = workers("io", env={**env, "PHOTOFARM_FAULT_POINT": "social.answered"},
                     concurrency=2, node=f"doomed-{network}")
    app.send_task("social.crosspost", kwargs={"photo_id": photo, "owner_id": OWNER,
                                              "network": network, "caption": "killed"},
                  queue="social")
    wait_for(lambda: not doomed.alive(), timeout=60, what="the worker to die at social.answered")
    doomed.kill()
    posted = standin.tweets if network == "twitter" else standin.page_photos
    assert len(posted()) == 1  # the network has it
    records = PostRecords(data, get_settings())
    assert records.get(photo, network) is None and records.pending(photo, network) is not None

    workers("io", env=env, concurrency=2, node=f"rescuer-{network}")
    record = wait_for(lambda: records.get(photo, network), timeout=60,
                      what="the redelivery to record the post")
    assert isinstance(record, dict) and record["status"] == "posted"
    assert record["how"] == ("duplicate" if network == "twitter" else "found")
    wait_for(lambda: data.hget("farm:metrics:tasks", "social.crosspost:ok"), what="ok")
    assert len(posted()) == 1
