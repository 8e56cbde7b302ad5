"""Issue 12: backup.verify shares amcheck's index checks among one connection per core. A corrupt index is
reported whichever connection checks it, the verdict is the same as on one connection, and a worker that
cannot see amcheck (not committed in its database) is not used, so it never raises a false alarm."""

from __future__ import annotations

import pytest

from stackops import pg
from tests.conftest import Fresh

pytestmark = pytest.mark.integration


def _plant(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text UNIQUE)")
        conn.execute("INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 5000) g")
        conn.execute("CREATE FUNCTION twice(x bigint) RETURNS bigint IMMUTABLE LANGUAGE sql AS 'SELECT x * 2'")
        conn.execute("CREATE INDEX users_twice_idx ON users (twice(id))")
        # the function changes under its index: the index no longer matches the rows (what amcheck finds)
        conn.execute("CREATE OR REPLACE FUNCTION twice(x bigint) RETURNS bigint IMMUTABLE LANGUAGE sql "
                     "AS 'SELECT x * 3'")
        conn.execute("ANALYZE users")
        conn.commit()


def test_a_corrupt_index_is_found_on_any_number_of_connections(fresh: Fresh) -> None:
    _plant(fresh)
    db = fresh.settings.env.db_name
    with pg.connect(fresh.runtime, db, autocommit=True) as conn:
        assert pg.install_amcheck(conn)
        verdicts = []
        for n in (0, 1, 3):
            workers = [pg.connect(fresh.runtime, db, autocommit=True) for _ in range(n)]
            try:
                got = pg.amcheck(conn, workers)
            finally:
                for w in workers:
                    w.close()
            assert not got.ok and "public.users_twice_idx" in got.detail, (n, got.detail)
            verdicts.append((got.ok, got.detail))
        assert verdicts[0] == verdicts[1] == verdicts[2]


def test_a_worker_without_amcheck_is_not_used(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
        conn.commit()
    db = fresh.settings.env.db_name
    with pg.connect(fresh.runtime, db, autocommit=True) as conn, \
            pg.connect(fresh.runtime, db, autocommit=True) as worker:
        got = pg.amcheck(conn, [worker])  # amcheck only inside conn's rolled-back transaction
        assert got.ok, got.detail
        assert worker.execute("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'").fetchone() == (0,)
