"""Every hot path of stackops timed side by side with what it replaces, on the same data in one run.

Each pair is measured alternately (A, B, A, B, ...) ``--repeat`` times and the median counts; the
table prints medians and ratios (ours / baseline), the JSON (``--json FILE``) holds every sample.
The data set is generated once per (scale, seed) under ``--root`` and reused (benchmarks.dataset).

    python benchmarks/bench.py [--scale 1] [--repeat 3] [--root /var/tmp/stackops-bench] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "lib")) if p not in sys.path]

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from benchmarks.dataset import Dataset, open_dataset  # noqa: E402

ROWS = ("backup.db vs floor", "backup.db vs guide", "backup (full) vs guide script", "restore.db vs guide",
        "restore.db vs raw pipe", "backup.verify vs restore.db", "backup.db vs pgBackRest",
        "peak RSS backup", "peak RSS restore", "invoke --list", "backup.list (1,000 backups)",
        "update downtime")


class Bench:
    def __init__(self, ds: Dataset, repeat: int, log: Callable[[str], None]) -> None:
        self.ds = ds
        self.repeat = repeat
        self.log = log
        self.env = {**os.environ, **ds.invoke_env(), "PYTHONPATH": str(ROOT / "lib")}
        self.db = ds.settings.env.db_name
        self.out = ds.base / "bench-out"
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()
        self.samples: dict[str, list[float]] = {}
        self.rss: dict[str, int] = {}

    # ----- helpers ---------------------------------------------------------------------------
    def pg_env(self, tool: str) -> tuple[list[str], dict[str, str]]:
        cmd = self.ds.runtime.pg_cmd(tool)
        return cmd.argv, {**os.environ, **cmd.env}

    def sh(self, script: str, tool: str = "psql") -> None:
        _, env = self.pg_env(tool)
        env["PATH"] = f"{self.ds.runtime.bindir}:{env['PATH']}"
        subprocess.run(["bash", "-o", "pipefail", "-ec", script], env=env, check=True,
                       stdout=subprocess.DEVNULL)

    def admin(self, query: sql.Composable | str) -> None:
        with psycopg.connect(**self.ds.runtime.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(query)

    def drop_like(self, prefix: str) -> None:
        with psycopg.connect(**self.ds.runtime.conninfo("postgres"), autocommit=True) as conn:
            for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                        (prefix + "%",)).fetchall():
                if name != self.db:
                    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def invoke(self, *args: str, rss_key: str | None = None) -> str:
        """`invoke ARGS --env test` as an operator runs it; with ``rss_key`` its peak RSS is sampled."""
        p = subprocess.Popen([sys.executable, "-m", "invoke", *args, "--env", "test"], cwd=ROOT, env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        peak = 0
        if rss_key is not None:
            while p.poll() is None:
                try:
                    with open(f"/proc/{p.pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                peak = max(peak, int(line.split()[1]) * 1024)
                except OSError:
                    pass
                time.sleep(0.02)
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"invoke {' '.join(args)} failed ({p.returncode}): {err.decode()[-2000:]}")
        if rss_key is not None:
            self.rss[rss_key] = max(self.rss.get(rss_key, 0), peak)
        return out.decode()

    def timed(self, name: str, fn: Callable[[], Any], setup: Callable[[], Any] | None = None,
              cleanup: Callable[[], Any] | None = None) -> None:
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        self.samples.setdefault(name, []).append(time.perf_counter() - t)
        if cleanup is not None:
            cleanup()

    def alternate(self, jobs: list[tuple[str, Callable[[], Any], Callable[[], Any] | None,
                                   Callable[[], Any] | None]]) -> None:
        for r in range(self.repeat):
            for name, fn, setup, cleanup in jobs:
                self.timed(name, fn, setup, cleanup)
                self.log(f"  run {r + 1}: {name} {self.samples[name][-1]:.2f} s")

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def paired(self, a: str, b: str) -> float:
        """Median of the per-round ratios a/b: each round ran both back to back, so a burst of load
        from other work on the machine hits both sides of a ratio rather than one median."""
        return statistics.median(x / y for x, y in zip(self.samples[a], self.samples[b], strict=True))

    def newest(self) -> str:
        backups = self.ds.settings.env.backups_dir
        return max((p for p in backups.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime).name

    def clear_backups(self) -> None:
        shutil.rmtree(self.ds.settings.env.backups_dir, ignore_errors=True)

    # ----- the measurements ------------------------------------------------------------------
    def backups(self) -> None:
        db, out = self.db, self.out
        self.log("backup.db vs guide pg_dump | gzip vs floor pg_dump -Fc -Z0 > /dev/null")
        self.alternate([
            ("floor pg_dump -Fc -Z0", lambda: self.sh(f"pg_dump -Fc -Z0 {db} > /dev/null", "pg_dump"), None, None),
            ("guide pg_dump | gzip", lambda: self.sh(f"pg_dump {db} | gzip > {out}/guide.sql.gz", "pg_dump"),
             None, None),
            ("invoke backup.db", lambda: self.invoke("backup.db", rss_key="backup"), self.clear_backups, None),
        ])
        self.sizes = {"guide": (out / "guide.sql.gz").stat().st_size,
                      "ours": next(self.ds.settings.env.backups_dir.glob("*/database.dump*")).stat().st_size}
        self.full_backup()

    def full_backup(self) -> None:
        db, out, up = self.db, self.out, self.ds.settings.env.uploads_dir
        self.log("full backup vs the guide's script (pg_dump | gzip + tar czf uploads)")
        self.alternate([
            ("guide script", lambda: self.sh(f"pg_dump {db} | gzip > {out}/guide.sql.gz && "
                                             f"tar czf {out}/uploads.tar.gz -C {up.parent} {up.name}", "pg_dump"),
             None, None),
            ("invoke backup", lambda: self.invoke("backup", rss_key="backup"), self.clear_backups, None),
        ])
        self.full_id = self.newest()

    def restores(self) -> None:
        dump = next(self.ds.settings.env.backups_dir.glob(f"{self.full_id}/database.dump*"))
        guide = self.out / "guide.sql.gz"
        scratch = "bench_scratch"

        def fresh() -> None:
            self.drop_like(scratch)
            self.admin(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(scratch)))

        def cleanup() -> None:
            self.drop_like(scratch)
            self.drop_like(f"{self.db}_pre_restore_")

        self.log("restore.db vs guide gunzip | psql vs raw zstd -dc | pg_restore")
        self.alternate([
            ("guide gunzip | psql", lambda: self.sh(f"gunzip -c {guide} | psql -X -q -d {scratch}"), fresh, cleanup),
            ("raw zstd -dc | pg_restore", lambda: self.sh(f"zstd -q -dc {dump} | pg_restore -d {scratch}",
                                                          "pg_restore"), fresh, cleanup),
            ("invoke restore.db", lambda: self.invoke("restore.db", self.full_id, "--yes", rss_key="restore"),
             None, cleanup),
        ])
        self.log("backup.verify vs restore.db")
        self.alternate([
            ("invoke backup.verify", lambda: self.invoke("backup.verify", "--backup", self.full_id), None, None),
            ("invoke restore.db ", lambda: self.invoke("restore.db", self.full_id, "--yes"), None, cleanup),
        ])

    def pgbackrest(self) -> str | None:
        exe = shutil.which("pgbackrest")
        if exe is None:
            return "n/a: pgbackrest not installed (apt-get install -y pgbackrest)"
        rt = self.ds.runtime
        self.out.chmod(0o755)
        work = Path(tempfile.mkdtemp(prefix="pgbr-", dir=self.out))
        for sub in ("repo", "log", "lock"):
            (work / sub).mkdir()
        conf = work / "pgbackrest.conf"
        conf.write_text(f"[global]\nrepo1-path={work}/repo\nlog-path={work}/log\nlock-path={work}/lock\n"
                        f"compress-type=zst\nprocess-max={os.cpu_count()}\nstart-fast=y\narchive-check=n\n"
                        f"log-level-console=warn\n[bench]\npg1-path={rt.pg_data}\n"
                        f"pg1-port={self.ds.settings.env.ports.postgres}\npg1-host-user=postgres\n"
                        f"pg1-user={self.ds.settings.env.db_user}\n")
        user = rt.run_as
        if user is not None:
            shutil.chown(work, user, user)
            for p in work.rglob("*"):
                shutil.chown(p, user, user)
        pw = rt.conninfo()["password"]
        env = {**os.environ, "PGPASSWORD": pw, "PGHOST": "127.0.0.1"}
        base = [exe, f"--config={conf}", "--stanza=bench"]
        run_as = ["runuser", "-u", user, "--"] if user else []

        def br(*args: str) -> None:
            subprocess.run([*run_as, "env", f"PGPASSWORD={pw}", "PGHOST=127.0.0.1", *base, *args], env=env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        try:
            br("stanza-create")
        except subprocess.CalledProcessError as exc:
            return "n/a: pgbackrest stanza-create failed: " + " ".join(exc.stderr.decode().split())[-300:]
        self.log("backup.db vs pgBackRest full backup")
        try:
            self.alternate([
                ("pgBackRest full", lambda: br("backup", "--type=full"), None, None),
                ("invoke backup.db ", lambda: self.invoke("backup.db"), self.clear_backups, None),
            ])
        except subprocess.CalledProcessError as exc:
            return "n/a: pgbackrest backup failed: " + " ".join((exc.stderr or b"").decode().split())[-300:]
        return None

    def small(self) -> None:
        self.log("invoke --list; backup.list with 1,000 backups")
        from stackops.backupset import seal

        backups = self.ds.settings.env.backups_dir
        src = backups / self.newest()
        many = self.out / "many"
        many.mkdir()
        manifest = json.loads((src / "manifest.json").read_text())
        start = datetime.fromisoformat(manifest["started_at"])
        for i in range(1000):
            at = start - timedelta(hours=6 * i)
            bid = f"{manifest['kind']}_{at.strftime('%Y%m%dT%H%M%SZ')}"
            (many / bid).mkdir(mode=0o700)
            (many / bid / "manifest.json").write_text(json.dumps(seal({**manifest, "id": bid,
                                                                       "started_at": at.isoformat()}), indent=2))
        env = {**self.env, "INVOKE_STACKOPS_ENVS_TEST_BACKUPS_DIR": str(many)}

        def listing() -> None:
            out = subprocess.run([sys.executable, "-m", "invoke", "backup.list", "--env", "test", "--json"],
                                 cwd=ROOT, env=env, check=True, capture_output=True).stdout
            assert len(json.loads(out)["backups"] if isinstance(json.loads(out), dict) else json.loads(out)) >= 1000

        self.alternate([
            ("invoke --list", lambda: subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=ROOT,
                                                     env=self.env, check=True, capture_output=True), None, None),
            ("invoke backup.list (1,000)", listing, None, None),
        ])


UPDATE_ROW = {"row": "update downtime", "baseline": "bare `docker compose up -d --wait` recreate",
              "target": "<= 1.2x"}


def downtime_row(got: dict[str, Any]) -> dict[str, Any]:
    """The "update downtime" row from benchmarks.update_downtime.measure: medians, and the median of the
    per-round ratios (each round ran the bare recreate, then the update)."""
    bare, ours = got["bare"], got["update"]
    ratio = statistics.median(u / b for u, b in zip(ours, bare, strict=True))
    whole = {k: round(statistics.median(v), 2) for k, v in got["steps"].items()}
    return {**UPDATE_ROW, "ours": f"{statistics.median(ours):.2f} s",
            "baseline": f"{UPDATE_ROW['baseline']} {statistics.median(bare):.2f} s", "ratio": f"{ratio:.2f}x",
            "ok": ratio <= 1.2, "ours_s": statistics.median(ours), "baseline_s": statistics.median(bare),
            "steps_s": whole, "samples": got}


def update_row(rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """`invoke update`'s downtime against a bare recreate (benchmarks/update_downtime.py, its own harness
    compose project), or the row saying why it was not measured."""
    def skipped(why: str) -> dict[str, Any]:
        log(f"update downtime not measured: {why}")
        return {**UPDATE_ROW, "ours": f"n/a: {why}", "ratio": "n/a", "ok": None}

    if rounds <= 0:
        return skipped("not measured in this run (--update-rounds 0)")
    try:
        from benchmarks import update_downtime
    except ImportError as exc:  # pytest-docker is a dev dependency
        return skipped(f"cannot load benchmarks/update_downtime.py ({exc})")
    log(f"update downtime vs bare docker compose recreate ({rounds} rounds, harness project)")
    try:
        return downtime_row(update_downtime.measure("dev", rounds))
    except update_downtime.Unavailable as exc:
        return skipped(str(exc))
    except Exception as exc:  # one row of the table: the rest of the run stands
        return skipped(f"the update downtime benchmark failed: {' '.join(str(exc).split())[-300:]}")


def table(rows: list[dict[str, Any]]) -> str:
    head = ("measure", "stackops", "compared with", "ratio", "target", "ok")
    body = [tuple(str(r.get(k, "")) for k in ("row", "ours", "baseline", "ratio", "target", "ok")) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*b) for b in body)])


def run(scale: float, repeat: int, root: Path, rss_scale: float | None, log: Callable[[str], None],
        only: str | None = None, update_rounds: int | None = None) -> dict[str, Any]:
    ds = open_dataset(root, scale, log=log)
    rss_small: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    try:
        b = Bench(ds, repeat, log)
        b.drop_like(f"{b.db}_pre_restore_")
        if only in (None, "restore"):
            if only is None:
                b.backups()
            else:
                b.clear_backups()
                b.invoke("backup")
                b.full_id = b.newest()
                b.sh(f"pg_dump {b.db} | gzip > {b.out}/guide.sql.gz", "pg_dump")
            b.restores()
        if only == "full":
            b.full_backup()
        pgbr = b.pgbackrest() if only is None else "not measured in this run (--only)"
        if only is None:
            b.small()
    finally:
        ds.down()
        shutil.rmtree(ds.base / "bench-out", ignore_errors=True)  # the guide's dumps: ~1 GB at scale 1
    if rss_scale is not None and only is None:
        ds2 = open_dataset(root, rss_scale, log=log)
        try:
            b2 = Bench(ds2, 1, log)
            b2.clear_backups()
            b2.invoke("backup", rss_key="backup")
            b2.invoke("restore.db", b2.newest(), "--yes", rss_key="restore")
            b2.drop_like(f"{b2.db}_pre_restore_")
            rss_small = b2.rss
        finally:
            ds2.down()
            shutil.rmtree(ds2.base / "bench-out", ignore_errors=True)
    m = b.median
    if only is not None:  # a partial run: the rows it measured
        if only == "full":
            rows.append({"row": "backup (full) vs guide script", "ours": f"{m('invoke backup'):.2f} s",
                         "baseline": f"guide script {m('guide script'):.2f} s",
                         "ratio": f"{b.paired('invoke backup', 'guide script'):.2f}x",
                         "target": f">= 8x faster (speed-up {b.paired('guide script', 'invoke backup'):.1f}x)",
                         "ok": b.paired("guide script", "invoke backup") >= 8})
        restore_rows = (("restore.db vs guide", "invoke restore.db", "guide gunzip | psql", 0.85),
                        ("restore.db vs raw pipe", "invoke restore.db", "raw zstd -dc | pg_restore", 1.15),
                        ("backup.verify vs restore.db", "invoke backup.verify", "invoke restore.db ", 1.2))
        for name, key, base, target in () if only == "full" else restore_rows:
            rows.append({"row": name, "ours": f"{m(key):.2f} s", "baseline": f"{base.strip()} {m(base):.2f} s",
                         "ratio": f"{b.paired(key, base):.2f}x", "target": f"<= {target}x",
                         "ok": b.paired(key, base) <= target, "ours_s": m(key), "baseline_s": m(base)})
        return {"scale": scale, "repeat": repeat, "only": only, "dataset": ds.info, "rows": rows,
                "samples": b.samples, "at": datetime.now(UTC).isoformat()}

    def ratio(name: str, a: str, base: str, target: str, ok: bool, extra: str = "") -> None:
        rows.append({"row": name, "ours": f"{m(a):.2f} s{extra}", "baseline": f"{base.strip()} {m(base):.2f} s",
                     "ratio": f"{b.paired(a, base):.2f}x", "target": target, "ok": ok,
                     "ours_s": m(a), "baseline_s": m(base)})

    ratio("backup.db vs floor", "invoke backup.db", "floor pg_dump -Fc -Z0", "<= 1.6x",
          b.paired("invoke backup.db", "floor pg_dump -Fc -Z0") <= 1.6)
    size_ratio = b.sizes["ours"] / b.sizes["guide"]
    ratio("backup.db vs guide", "invoke backup.db", "guide pg_dump | gzip", f">= 10x faster; size <= 1.1x "
          f"(size {size_ratio:.2f}x, speed-up {b.paired('guide pg_dump | gzip', 'invoke backup.db'):.1f}x)",
          b.paired("guide pg_dump | gzip", "invoke backup.db") >= 10 and size_ratio <= 1.1)
    rows[-1]["size_ratio"] = round(size_ratio, 3)
    ratio("backup (full) vs guide script", "invoke backup", "guide script",
          f">= 8x faster (speed-up {b.paired('guide script', 'invoke backup'):.1f}x)",
          b.paired("guide script", "invoke backup") >= 8)
    ratio("restore.db vs guide", "invoke restore.db", "guide gunzip | psql", "<= 0.85x",
          b.paired("invoke restore.db", "guide gunzip | psql") <= 0.85)
    ratio("restore.db vs raw pipe", "invoke restore.db", "raw zstd -dc | pg_restore", "<= 1.15x",
          b.paired("invoke restore.db", "raw zstd -dc | pg_restore") <= 1.15)
    ratio("backup.verify vs restore.db", "invoke backup.verify", "invoke restore.db ", "<= 1.2x",
          b.paired("invoke backup.verify", "invoke restore.db ") <= 1.2)
    if pgbr is None:
        ratio("backup.db vs pgBackRest", "invoke backup.db ", "pgBackRest full", "<= 0.65x",
              b.paired("invoke backup.db ", "pgBackRest full") <= 0.65)
    else:
        rows.append({"row": "backup.db vs pgBackRest", "ours": "", "baseline": pgbr, "ratio": "n/a",
                     "target": "<= 0.65x", "ok": None})
    for what in ("backup", "restore"):
        small = rss_small.get(what)
        big = b.rss.get(what, 0)
        rows.append({"row": f"peak RSS {what}", "ours": f"{big / 2**20:.0f} MB at scale {scale:g}",
                     "baseline": f"{small / 2**20:.0f} MB at scale {rss_scale:g}" if small else "n/a",
                     "ratio": f"{big / small:.2f}x" if small else "n/a", "target": "<= 150 MB, flat",
                     "ok": big <= 150 * 2**20 and (small or 0) <= 150 * 2**20, "bytes": big, "small_bytes": small})
    for name, key, limit in (("invoke --list", "invoke --list", 0.5),
                             ("backup.list (1,000 backups)", "invoke backup.list (1,000)", 1.0)):
        rows.append({"row": name, "ours": f"{m(key):.2f} s", "baseline": "wall time", "ratio": "",
                     "target": f"<= {limit} s", "ok": m(key) <= limit, "ours_s": m(key)})
    rows.append(update_row(repeat if update_rounds is None else update_rounds, log))
    return {"scale": scale, "repeat": repeat, "dataset": ds.info, "rows": rows, "samples": b.samples,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
            "at": datetime.now(UTC).isoformat()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rss-scale", type=float, default=None, help="second, smaller scale for the RSS row "
                    "(default: scale / 10)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--root", type=Path, default=Path("/var/tmp/stackops-bench"))
    ap.add_argument("--json", type=Path, default=None, help="where to write the results as JSON "
                    "(default: ROOT/results-scale-<scale>.json)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--only", choices=("restore", "full"), default=None,
                    help="measure only the restore and verify rows, or only the full-backup row")
    ap.add_argument("--update-rounds", type=int, default=None, help="rounds of the update downtime row "
                    "(default: --repeat; 0: not measured). Needs Docker and the stand-in images; uses the harness "
                    "compose project stackops-it-dev, so never while a compose test session runs")
    a = ap.parse_args(argv)
    log = (lambda _s: None) if a.quiet else (lambda s: print(s, flush=True))
    result = run(a.scale, a.repeat, a.root, a.rss_scale if a.rss_scale is not None else a.scale / 10, log, a.only,
                 a.update_rounds)
    print(table(result["rows"]))
    out = a.json or a.root / f"results-scale-{a.scale:g}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"JSON: {out}")
    return result


if __name__ == "__main__":
    main()
