"""`farm photo show ID` / `farm photo reprocess ID`."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("photo", help="show a photo's record, or remake its variants")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = psub.add_parser("show", help="the photo record: status, variants, reason, timings")
    show.add_argument("id", type=int)
    again = psub.add_parser("reprocess", help="remake the variants (on the photos_batch queue)")
    again.add_argument("id", type=int)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from config.redis import data_redis
    from config.settings import get_settings
    from tasks.photo_records import PhotoRecords

    record = PhotoRecords(data_redis(), get_settings()).get(args.id)
    if record is None:
        print(f"farm photo: no record for photo {args.id}", file=sys.stderr)
        return 1
    if args.action == "show":
        print(json.dumps(record.as_dict(), indent=2))
        return 0
    from config.celery_app import app

    task_id = app.send_task("photos.reprocess", kwargs={"photo_id": args.id}).id
    print(f"reprocess of photo {args.id} queued as {task_id}")
    return 0
