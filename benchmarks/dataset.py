"""A benchmark data set on a private local cluster, generated once per (scale, seed) and reused.

``open_dataset(root, scale, seed)`` starts (or initialises) a LocalRuntime cluster whose state,
uploads and backups live under ``root/scale-<scale>-seed-<seed>/`` on free loopback ports; the
first time it applies the ImpactBot v2 migrations, runs ``benchmarks.generate`` and VACUUM
ANALYZE, and writes ``dataset.json``. Later runs find ``dataset.json`` and reuse the data.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "lib")) if p not in sys.path]

import psycopg  # noqa: E402

from benchmarks.generate import generate  # noqa: E402
from stackops.config import Settings  # noqa: E402
from stackops.report import NullReporter  # noqa: E402
from stackops.runtime.local import LocalRuntime  # noqa: E402
from tests.conftest import free_port, make_settings  # noqa: E402


@dataclass
class Dataset:
    base: Path
    settings: Settings
    runtime: LocalRuntime
    info: dict[str, Any]

    def invoke_env(self) -> dict[str, str]:
        """INVOKE_* variables that point `invoke ... --env test` at this cluster and its folders."""
        e = self.settings.env
        p = "INVOKE_STACKOPS_ENVS_TEST_"
        return {p + "RUNTIME": "local", p + "STATE_DIR": str(e.state_dir), p + "DB_NAME": e.db_name,
                p + "UPLOADS_DIR": str(e.uploads_dir), p + "BACKUPS_DIR": str(e.backups_dir),
                p + "PORTS_POSTGRES": str(e.ports.postgres), p + "PORTS_REDIS": str(e.ports.redis),
                p + "PORTS_BACKEND": str(e.ports.backend)}

    def down(self) -> None:
        self.runtime.down(NullReporter())


def _label(scale: float) -> str:
    return f"{scale:g}".replace(".", "_")


def open_dataset(root: Path, scale: float, seed: int = 0, log: Any = print) -> Dataset:
    base = root / f"scale-{_label(scale)}-seed-{seed}"
    base.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    base.chmod(0o755)
    ports = {"postgres": str(free_port()), "redis": str(free_port()), "backend": str(free_port())}
    settings = make_settings("test", runtime="local", state_dir=str(base / "state"), db_name="impactbot_v2",
                             uploads_dir=str(base / "uploads"), backups_dir=str(base / "backups"), ports=ports)
    rt = LocalRuntime(settings)
    marker = base / "dataset.json"
    if not marker.exists():  # a half-made data set is made again from nothing
        for sub in ("state", "uploads", "backups"):
            shutil.rmtree(base / sub, ignore_errors=True)
        (base / "uploads").mkdir()
    rt.up(NullReporter())
    if marker.exists():
        return Dataset(base, settings, rt, json.loads(marker.read_text()))
    try:
        from stackops.migrate.engine import apply

        apply(settings, rt, report=NullReporter())
        shutil.rmtree(base / "backups", ignore_errors=True)  # the pre-migration backup of an empty database
        log(f"generating the scale-{scale:g} data set (seed {seed}) in {base}")
        started = time.monotonic()
        with psycopg.connect(**rt.conninfo()) as conn:
            counts = generate(conn, settings.env.uploads_dir, scale, seed)
        with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE, FREEZE)")
            conn.execute("CHECKPOINT")
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        uploads = sum(p.stat().st_size for p in settings.env.uploads_dir.rglob("*") if p.is_file())
        info = {"scale": scale, "seed": seed, "rows": counts, "database_bytes": size, "uploads_bytes": uploads,
                "generated_seconds": round(time.monotonic() - started, 1)}
        marker.write_text(json.dumps(info, indent=2) + "\n")
        log(f"generated in {info['generated_seconds']} s: database {size / 2**20:.0f} MiB, "
            f"uploads {uploads / 2**20:.0f} MiB, rows {counts}")
        return Dataset(base, settings, rt, info)
    except BaseException:
        rt.down(NullReporter())
        raise


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="generate (or check) a benchmark data set")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=Path("/var/tmp/stackops-bench"))
    a = ap.parse_args()
    ds = open_dataset(a.root, a.scale, a.seed)
    print(json.dumps(ds.info))
    ds.down()
