"""Time `invoke backup.db` against the guide's `pg_dump | gzip` and the `pg_dump -Fc -Z0 > /dev/null` floor.

All three run in one process, on the same generated database of a private local cluster, and the
script prints ratios (ours / baseline), never absolute verdicts. Usage:

    python benchmarks/backup_speed.py [--mb 300] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lib")]

from benchmarks.generate import generate  # noqa: E402
from stackops.report import NullReporter  # noqa: E402
from stackops.runtime.local import LocalRuntime  # noqa: E402
from tests.conftest import free_port, make_settings  # noqa: E402


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="approximate table data to generate")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each command; the fastest counts")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="stackops-bench-"))
    base.chmod(0o755)
    ports = {"postgres": str(free_port()), "redis": str(free_port()), "backend": str(free_port())}
    settings = make_settings("test", runtime="local", state_dir=str(base / "state"),
                             uploads_dir=str(base / "uploads"), backups_dir=str(base / "backups"), ports=ports)
    rt = LocalRuntime(settings)
    rt.up(NullReporter())
    try:
        with psycopg.connect(**rt.conninfo()) as conn:
            counts = generate(conn, args.mb)
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        print(f"database: {size / 2**20:.0f} MiB on disk, rows {counts}")
        dump = rt.pg_cmd("pg_dump")
        env = {**os.environ, **dump.env}
        db = settings.env.db_name
        out = base / "out"
        out.mkdir()

        def guide() -> None:  # the guide's backup-restore.sh: plain SQL through gzip
            with (out / "guide.sql.gz").open("wb") as f:
                p1 = subprocess.Popen([*dump.argv, db], stdout=subprocess.PIPE, env=env)
                subprocess.run(["gzip"], stdin=p1.stdout, stdout=f, check=True)
                assert p1.stdout is not None
                p1.stdout.close()
                assert p1.wait() == 0

        def floor() -> None:
            subprocess.run([*dump.argv, "-Fc", "-Z0", db], stdout=subprocess.DEVNULL, env=env, check=True)

        inv_env = {**os.environ, "INVOKE_STACKOPS_ENVS_TEST_RUNTIME": "local",
                   "INVOKE_STACKOPS_ENVS_TEST_STATE_DIR": str(base / "state"),
                   "INVOKE_STACKOPS_ENVS_TEST_BACKUPS_DIR": str(base / "backups"),
                   "INVOKE_STACKOPS_ENVS_TEST_PORTS_POSTGRES": ports["postgres"],
                   "INVOKE_STACKOPS_ENVS_TEST_PORTS_REDIS": ports["redis"]}

        def ours() -> None:
            subprocess.run([sys.executable, "-m", "invoke", "backup.db", "--env", "test"], cwd=ROOT, env=inv_env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        results = {name: min(timed(fn) for _ in range(args.repeat))
                   for name, fn in (("floor", floor), ("guide", guide), ("ours", ours))}
        ours_size = min(p.stat().st_size for p in (base / "backups").glob("*/database.dump.*"))
        guide_size = (out / "guide.sql.gz").stat().st_size
        print(f"pg_dump -Fc -Z0 > /dev/null : {results['floor']:7.2f} s")
        print(f"pg_dump | gzip (the guide)  : {results['guide']:7.2f} s  {guide_size / 2**20:8.1f} MiB")
        print(f"invoke backup.db (stackops) : {results['ours']:7.2f} s  {ours_size / 2**20:8.1f} MiB")
        print(f"ratio time ours / floor     : {results['ours'] / results['floor']:.2f}x  (target <= 1.8x)")
        print(f"speed-up guide / ours       : {results['guide'] / results['ours']:.2f}x  (target >= 10x)")
        print(f"ratio size ours / guide     : {ours_size / guide_size:.2f}x  (target <= 1.1x)")
    finally:
        rt.down(NullReporter())
        subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
