"""`farm photo show ID` / `farm photo reprocess ID`."""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("photo", help="show a photo's record, or remake its variants")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = psub.add_parser("show", help="the photo record: status, variants, reason, timings")
    show.add_argument("id", type=int)
    again = psub.add_parser("reprocess", help="remake the variants (on the photos_batch queue)")
    again.add_argument("id", type=int)
    up = psub.add_parser("upload", help="store an original (multipart when large) and enqueue "
                                        "photo_uploaded, as the web tier does")
    up.add_argument("path", type=Path)
    up.add_argument("--id", type=int, required=True, help="the photo's id")
    up.add_argument("--owner", type=int, required=True, help="the owner's user id")
    up.add_argument("--caption", default="")
    up.add_argument("--share-to", default="", help="comma-separated: twitter,facebook")
    p.set_defaults(handler=run)


def upload(args: argparse.Namespace) -> int:
    from config.settings import get_settings
    from tasks import enqueue
    from tasks.blobs import open_store

    if not args.path.is_file():
        print(f"farm photo: no such file {args.path}", file=sys.stderr)
        return 2
    key = f"originals/{args.id}{args.path.suffix.lower()}"
    content_type = mimetypes.guess_type(args.path.name)[0] or "application/octet-stream"
    share_to = [n for n in args.share_to.split(",") if n]
    try:  # validate before storing anything
        enqueue.message("photos.process", photo_id=args.id, owner_id=args.owner,
                        original_key=key, caption=args.caption, share_to=share_to)
    except ValueError as exc:
        print(f"farm photo: {exc}", file=sys.stderr)
        return 2
    open_store(get_settings()).put_file(key, args.path, content_type=content_type)
    task_id = enqueue.photo_uploaded(args.id, args.owner, key, args.caption, share_to)
    print(f"stored {key}; photo {args.id} queued as {task_id}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "upload":
        return upload(args)
    from config.settings import get_settings
    from tasks.core.redis import data_redis
    from tasks.photos.records import PhotoRecords

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
