"""The compose PITR swap (stackops.pitr_compose.SWAP_SCRIPT) killed after every single rename, on a real
folder with bash and coreutils, as the helper container runs it: at no point is the data folder a startable
mix of the two clusters (pg_control is only there when the root is wholly one cluster), and running the
script again always ends with the restored cluster in place and the previous one whole in the kept folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stackops.pitr_compose import SWAP_SCRIPT

LIVE = {"PG_VERSION": "15", "global/pg_control": "live", "base/1/1259": "live rows",
        "pg_wal/000000010000000000000003": "w", "postgresql.auto.conf": "archive_mode = on", "pg_xact/0000": "x",
        "backup_label.old": "old"}
RESTORED = {"PG_VERSION": "15", "global/pg_control": "restored", "base/1/1259": "restored rows",
            "pg_wal/00000002.history": "1\t0/5000000", "pg_wal/archive_status/.keep": "",
            "postgresql.auto.conf": "restore_command = ...", "pg_xact/0000": "y"}
# count mv with a shell function: KILL_AFTER renames, then SIGKILL of the script itself (what kill -9 leaves)
KILLER = ('calls=0\n'
          'mv() { calls=$((calls + 1)); if [ "$calls" -gt "$KILL_AFTER" ]; then kill -9 $$; fi; command mv "$@"; }\n')


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _make(root: Path) -> Path:
    pgdata = root / "data"
    for rel, text in LIVE.items():
        (pgdata / rel).parent.mkdir(parents=True, exist_ok=True)
        (pgdata / rel).write_text(text)
    (pgdata / "lost+found").mkdir()
    for rel, text in RESTORED.items():
        path = pgdata / ".pitr" / "side-1" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pgdata


def _run(pgdata: Path, kill_after: int | None = None) -> subprocess.CompletedProcess[str]:
    script = (KILLER if kill_after is not None else "") + SWAP_SCRIPT
    env = {"PATH": "/usr/bin:/bin", "KILL_AFTER": str(kill_after or 0)}
    return subprocess.run(["bash", "-c", script, "swap", str(pgdata), "kept-1", "side-1"], env=env,
                          capture_output=True, text=True, check=False, timeout=60)


def _root(pgdata: Path) -> dict[str, str]:
    return {k: v for k, v in _tree(pgdata).items() if not k.startswith(".pitr/")}


def _renames_in_a_whole_run(tmp_path: Path) -> int:
    pgdata = _make(tmp_path / "count")
    script = KILLER + SWAP_SCRIPT + '\necho "renames=$calls" >&2\n'
    done = subprocess.run(["bash", "-c", script, "swap", str(pgdata), "kept-1", "side-1"],
                          env={"PATH": "/usr/bin:/bin", "KILL_AFTER": "100000"}, capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stderr.rsplit("renames=", 1)[1].split()[0])


def test_a_swap_killed_after_any_rename_is_never_a_mix_and_finishes_when_run_again(tmp_path: Path) -> None:
    total = _renames_in_a_whole_run(tmp_path)
    assert total >= len({rel.split("/")[0] for rel in {**LIVE, **RESTORED}}) + 2
    for k in range(total):
        pgdata = _make(tmp_path / f"k{k}")
        killed = _run(pgdata, kill_after=k)
        assert killed.returncode == -9 or killed.returncode == 137, (k, killed.stderr)
        root = _root(pgdata)
        if "global/pg_control" in root:  # startable: must be exactly one whole cluster
            assert root in (LIVE, RESTORED), (k, sorted(root))
        finished = _run(pgdata)
        assert finished.returncode == 0, (k, finished.stderr)
        assert _root(pgdata) == {**RESTORED, "pg_wal/archive_status/00000002.history.ready": ""}, k
        assert _tree(pgdata / ".pitr" / "kept-1") == LIVE, k  # the previous cluster, whole
        assert not (pgdata / ".pitr" / "side-1").exists() and not (pgdata / ".pitr" / "swap").exists(), k
        assert (pgdata / "lost+found").is_dir(), k
        again = _run(pgdata)  # a helper run once more (a killed stackops's one went on): nothing to do
        assert again.returncode == 0 and "already swapped in" in again.stderr, k
        assert _tree(pgdata / ".pitr" / "kept-1") == LIVE, k


def test_the_rollback_direction_puts_the_kept_cluster_back(tmp_path: Path) -> None:
    pgdata = _make(tmp_path / "back")
    assert _run(pgdata).returncode == 0
    back = subprocess.run(["bash", "-c", SWAP_SCRIPT, "swap", str(pgdata), "failed-1", "kept-1"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert back.returncode == 0, back.stderr
    assert _root(pgdata) == LIVE
    assert _tree(pgdata / ".pitr" / "failed-1")["global/pg_control"] == "restored"


def test_nothing_to_swap_in_is_a_no_op(tmp_path: Path) -> None:
    pgdata = _make(tmp_path / "none")
    subprocess.run(["rm", "-rf", str(pgdata / ".pitr" / "side-1")], check=True)
    done = subprocess.run(["bash", "-c", SWAP_SCRIPT, "swap", str(pgdata), "kept-1", "side-1"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0 and _root(pgdata) == LIVE
