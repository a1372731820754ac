"""Operator commands, against the database of KD_DATABASE_URL (or the embedded default):

    python -m jobs.admin migrate                   # alembic upgrade head
    python -m jobs.admin create-key --tenant NAME  # prints the new key, alone, on stdout
    python -m jobs.admin revoke-key PREFIX_OR_ID
    python -m jobs.admin list-keys
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.engine import make_url

from jobs import api_keys
from jobs.db import make_engine, make_sessionmaker
from jobs.errors import JobsError
from jobs.settings import settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.admin", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="bring the database schema to the newest revision")
    create = commands.add_parser("create-key", help="create an API key (and the tenant if new)")
    create.add_argument("--tenant", required=True, help="tenant name")
    revoke = commands.add_parser("revoke-key", help="revoke an API key")
    revoke.add_argument("prefix_or_id", help="the key's 12-character prefix (from list-keys) or its id")
    commands.add_parser("list-keys", help="list keys: id, prefix, tenant, created, revoked")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    url = settings.db_url
    if args.command == "migrate":
        from jobs import migrate  # alembic is slow to import; only this command needs it

        migrate.upgrade(url)
        shown = make_url(url).render_as_string(hide_password=True)
        print(f"{shown} is at the newest revision", file=sys.stderr)
        return 0
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            if args.command == "create-key":
                plain_key, key = api_keys.create_key(session, tenant_name=args.tenant)
                session.commit()
                print(plain_key)
                print(f"created key {key.id} ({key.prefix}…) for tenant {args.tenant!r}; "
                      "it is shown only once", file=sys.stderr)
            elif args.command == "revoke-key":
                key = api_keys.revoke_key(session, prefix_or_id=args.prefix_or_id)
                session.commit()
                print(f"revoked key {key.id} ({key.prefix}…)", file=sys.stderr)
            elif args.command == "list-keys":
                for key, tenant in api_keys.list_keys(session):
                    revoked = key.revoked_at.isoformat() if key.revoked_at else "active"
                    print(f"{key.id}\t{key.prefix}\t{tenant.name}\t{key.created_at.isoformat()}\t{revoked}")
    except JobsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
