"""What cookieless page views leave in ``django_session``, before and after the housekeeping run.

    DATABASE_URL=postgres://…/scratch python -m bench.session_growth [--views 10000]

Against a scratch database (it is migrated, and its sessions are deleted
first and last): N page views of ``/chat/lobby/`` through the whole Django
stack, each without a cookie (a crawler, a client that keeps none), then the
rows and bytes of ``django_session``; then ``manage.py housekeeping`` as it
runs the next day (the clock moved a day and a minute on), the same figures,
and again after a plain ``VACUUM`` (what autovacuum does). Figures of record:
docs/performance.md, "Sessions of page views alone".
"""

import argparse
import os
import sys
import time
from datetime import timedelta
from io import StringIO
from unittest import mock

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


def figures(connection) -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), coalesce(sum(pg_column_size(s.*)), 0), pg_relation_size('django_session'),"
            " pg_total_relation_size('django_session') FROM django_session s"
        )
        rows, live, table, total = cursor.fetchone()
    return {"rows": rows, "live_bytes": live, "table_bytes": table, "total_bytes": total}


def show(label: str, f: dict[str, int]) -> None:
    print(
        f"{label:<34} rows {f['rows']:>7,}   live {f['live_bytes']:>10,} B   "
        f"table {f['table_bytes']:>10,} B   with indexes and TOAST {f['total_bytes']:>10,} B"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=10_000)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        parser.error("set DATABASE_URL to a scratch PostgreSQL database")
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.sessions.models import Session
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    # Plain static names: what is measured is the session, not the manifest.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    call_command("migrate", "--noinput", verbosity=0)
    Session.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM django_session")

    client = Client()
    started = time.perf_counter()
    for _ in range(args.views):
        client.cookies.clear()
        assert client.get("/chat/lobby/").status_code == 200
    elapsed = time.perf_counter() - started
    print(f"{args.views:,} cookieless page views in {elapsed:.1f} s ({1000 * elapsed / args.views:.2f} ms each)")
    show("after the page views", figures(connection))

    out = StringIO()
    call_command("housekeeping", stdout=out)
    show("housekeeping the same day", figures(connection))
    a_day_later = timezone.now() + timedelta(days=1, minutes=1)
    with mock.patch.object(timezone, "now", lambda: a_day_later):
        call_command("housekeeping", stdout=out)
    show("housekeeping a day later", figures(connection))
    with connection.cursor() as cursor:
        cursor.execute("VACUUM django_session")
    show("then VACUUM (autovacuum's)", figures(connection))
    print(out.getvalue().strip())
    Session.objects.all().delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
