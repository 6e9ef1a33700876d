"""`fitserve keys create NAME | list | revoke NAME`: manage the API keys a server accepts.

The secret is printed once, alone on stdout (so `KEY=$(fitserve keys create ci)` works), and only
its sha256 is stored. Every command runs `upgrade head` first, so it works on a fresh database.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.auth import create_key, revoke_key
from app.config import Settings
from app.db import make_engine, make_sessionmaker, upgrade_head
from app.tables import ApiKey


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = subparsers.add_parser(
        "keys", help="create, list and revoke API keys", description=__doc__.splitlines()[0]
    )
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a key and print its secret once")
    create.add_argument("name", help="a label for the key, e.g. the client or person using it")
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="list keys (names and ids; never secrets)")
    listing.set_defaults(handler=_list)

    revoke = actions.add_parser("revoke", help="revoke a key by name; it stops working at once")
    revoke.add_argument("name")
    revoke.add_argument(
        "--keep-jobs",
        action="store_true",
        help="leave the key's queued and running jobs alone (by default they are cancelled)",
    )
    revoke.set_defaults(handler=_revoke)

    for parser in (create, listing, revoke):
        parser.add_argument(
            "--database-url",
            default=None,
            help="database to use (default: FITSERVE_DATABASE_URL or ./fitserve.db)",
        )


@contextmanager
def _sessions(args: argparse.Namespace) -> Iterator[sessionmaker[Session]]:
    settings = Settings() if args.database_url is None else Settings(database_url=args.database_url)
    upgrade_head(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def _create(args: argparse.Namespace) -> int:
    try:
        with _sessions(args) as sessions, sessions.begin() as session:
            if session.scalar(select(ApiKey.id).where(ApiKey.name == args.name)) is not None:
                print(
                    f"error: a key named {args.name!r} already exists; choose another name "
                    "(or revoke it and use a new one)",
                    file=sys.stderr,
                )
                return 1
            key, secret = create_key(session, name=args.name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except IntegrityError:  # a concurrent create with the same name
        print(f"error: a key named {args.name!r} already exists", file=sys.stderr)
        return 1
    print(secret)
    print(
        f"created key {key.name!r} (id {key.id}). This is the only time the secret is shown: "
        "send it as 'Authorization: Bearer <key>'.",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    with _sessions(args) as sessions, sessions() as session:
        keys = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.name)).all()
    if not keys:
        print("no API keys; create one with `fitserve keys create NAME`", file=sys.stderr)
        return 0
    print(f"{'NAME':<32} {'ID':<32} {'CREATED':<20} STATUS")
    for key in keys:
        status = "active" if key.revoked_at is None else f"revoked {key.revoked_at:%Y-%m-%d %H:%M}"
        print(f"{key.name:<32} {key.id:<32} {key.created_at:%Y-%m-%d %H:%M:%S} {status}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with _sessions(args) as sessions, sessions.begin() as session:
        key = revoke_key(session, name=args.name, stop_jobs=not args.keep_jobs)
        if key is None:
            print(f"error: no key named {args.name!r}; see `fitserve keys list`", file=sys.stderr)
            return 1
    jobs = "its jobs are left running" if args.keep_jobs else "its queued and running jobs stop"
    print(
        f"revoked key {args.name!r}; requests sending it now get 401, its event streams close "
        f"and {jobs}",
        file=sys.stderr,
    )
    return 0
