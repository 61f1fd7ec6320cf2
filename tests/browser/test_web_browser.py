"""The demo web tier in a real browser, with real workers behind it: follow a user, upload a
photo as them, watch its variants appear, and find it in the follower's feed.

Set PHOTOFARM_UPDATE_DOCS=1 to refresh docs/web-tier.png (the README's picture) from this run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from config.settings import get_settings
from tests.support.workers import WorkerFactory
from workers.demo_photos import sample_uploads
from workers.embedded_redis import free_port
from workers.web.app import create_app
from workers.web.serve import WebServer

pytestmark = [pytest.mark.browser, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
OWNER, FOLLOWER = 8101, 8102


def test_upload_to_the_photo_in_a_followers_feed(
        workers: WorkerFactory, data: redis.Redis, browser: Any, artifacts: Path,
        tmp_path: Path) -> None:
    workers("cpu")
    workers("feed")
    photo, _ = sample_uploads()["originals/103.jpg"]
    upload = tmp_path / "harbour.jpg"
    upload.write_bytes(photo)
    s = dataclasses.replace(get_settings(), web_port=free_port())
    with WebServer(create_app(s), s) as web:
        context = browser.new_context(viewport={"width": 1100, "height": 820})
        try:
            page = context.new_page()
            page.goto(web.url + "/")
            # The follower follows the owner (the graph, then user_followed).
            form = page.locator("form#follow")
            form.locator("[name=follower_id]").fill(str(FOLLOWER))
            form.locator("[name=followee_id]").fill(str(OWNER))
            form.get_by_role("button", name="Follow", exact=True).click()
            page.wait_for_url(f"**/users/{FOLLOWER}")
            assert page.locator("#following").inner_text() == str(OWNER)

            # The owner uploads: the original into the blob store, then photo_uploaded.
            page.goto(web.url + "/")
            form = page.locator("form#upload")
            form.locator("[name=owner_id]").fill(str(OWNER))
            form.locator("[name=caption]").fill("harbour at dawn")
            form.locator("[name=photo]").set_input_files(str(upload))
            form.get_by_role("button", name="Upload").click()
            page.wait_for_url("**/photos/*")
            photo_id = int(page.url.rsplit("/", 1)[1])
            page.locator("#status.ready").wait_for(timeout=30_000)
            for name in ("full", "sq612", "sq306", "sq150"):
                img = page.locator(f"figure[data-variant={name}] img")
                img.wait_for()
                # Each variant served from the blob store through the app, decoded by chromium.
                page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                       arg=img.element_handle(), timeout=10_000)
            assert page.locator("figure[data-variant=sq150] figcaption").inner_text() \
                .startswith("sq150 150x150")
            page.screenshot(path=str(artifacts / "web-photo.png"), full_page=True)

            # Fan-out puts it in the follower's feed; the page polls feed_page.
            page.goto(f"{web.url}/users/{FOLLOWER}")
            item = page.locator(f'li[data-photo="{photo_id}"] img')
            item.wait_for(timeout=30_000)
            page.wait_for_function("img => img.complete && img.naturalWidth === 150",
                                   arg=item.element_handle(), timeout=10_000)
            page.screenshot(path=str(artifacts / "web-feed.png"), full_page=True)
        finally:
            context.close()
    feeds_key = s.key("feed", FOLLOWER)
    assert data.lrange(feeds_key, 0, -1) == [str(photo_id)]
    if os.environ.get("PHOTOFARM_UPDATE_DOCS") == "1":
        shutil.copyfile(artifacts / "web-photo.png", ROOT / "docs" / "web-tier.png")
