"""``tollway state backup|restore|verify`` and ``tollway secrets rotate``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import sys
from pathlib import Path
from typing import Any

from gateway.state.archive import ArchiveError, backup, restore, verify

__all__ = ["add_commands", "prune", "rotate_secrets", "run"]

_STAMP = re.compile(r"^tollway-state-(\d{8}T\d{6}Z)\.twb$")


def add_commands(commands: Any) -> None:
    state = commands.add_parser("state", help="back up, verify and restore keys, usage and audit")
    sub = state.add_subparsers(dest="state_command", required=True)
    make = sub.add_parser("backup", help="write the configured store to one archive file")
    make.add_argument("archive", nargs="?", help="the file (or use --dir)")
    make.add_argument("--dir", help="write tollway-state-<UTC time>.twb here")
    make.add_argument("--keep-days", type=float, help="with --dir: remove archives older than this")
    make.add_argument("--encrypt", action="store_true", help="encrypt with TOLLWAY_SECRET_KEY")
    check = sub.add_parser("verify", help="check an archive's checksums, counts and schema")
    check.add_argument("archive")
    put = sub.add_parser("restore", help="replace the configured store's contents with an archive")
    put.add_argument("archive")
    put.add_argument("--force", action="store_true", help="replace a store that holds data")
    for command in (make, check, put):
        command.add_argument("--config", help="YAML config (default: $TOLLWAY_CONFIG or embedded)")


def prune(folder: Path, keep_days: float, now: dt.datetime) -> list[Path]:
    """Remove archives named by time older than `keep_days`, never the newest."""
    dated = sorted(
        (dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC), path)
        for path in folder.iterdir()
        if (m := _STAMP.match(path.name))
    )
    removed = []
    for when, path in dated[:-1]:
        if now - when > dt.timedelta(days=keep_days):
            path.unlink()
            removed.append(path)
    return removed


def run(url: str, args: argparse.Namespace) -> int:
    keys = os.environ.get("TOLLWAY_SECRET_KEY") or None
    try:
        if args.state_command == "verify":
            manifest = verify(Path(args.archive), keys)
            counts = ", ".join(
                f"{t.removeprefix('tollway_')} {i['rows']}" for t, i in manifest["tables"].items()
            )
            print(f"{args.archive}: ok (schema {manifest['schema_version']}, {counts})")
            return 0
        if args.state_command == "restore":
            manifest = asyncio.run(restore(url, Path(args.archive), keys, force=args.force))
            rows = sum(i["rows"] for i in manifest["tables"].values())
            print(f"restored {rows} rows from {args.archive}")
            return 0
        if args.encrypt and not keys:
            raise ArchiveError("--encrypt needs TOLLWAY_SECRET_KEY")
        if args.dir:
            folder = Path(args.dir)
            folder.mkdir(parents=True, exist_ok=True)
            now = dt.datetime.now(dt.UTC)
            target = folder / f"tollway-state-{now:%Y%m%dT%H%M%SZ}.twb"
        elif args.archive:
            target, now, folder = Path(args.archive), dt.datetime.now(dt.UTC), None
        else:
            raise ArchiveError("give an ARCHIVE file or --dir")
        manifest = asyncio.run(backup(url, target, encrypt_with=keys if args.encrypt else None))
        rows = sum(i["rows"] for i in manifest["tables"].values())
        print(f"{target}: {rows} rows")
        if folder is not None and args.keep_days is not None:
            for path in prune(folder, args.keep_days, now):
                print(f"removed {path}")
        return 0
    except ArchiveError as exc:
        print(f"tollway: {exc}", file=sys.stderr)
        return 1


def rotate_secrets(text: str, keys: str) -> str:
    """`text` (a config file) with every Fernet token re-encrypted under the first key;
    everything else, comments and order included, left as it is."""
    from backends.secrets import fernet

    box = fernet(keys)
    return re.sub(
        r"gAAAAA[A-Za-z0-9_=-]{20,}",
        lambda m: box.rotate(m.group(0).encode()).decode(),
        text,
    )
