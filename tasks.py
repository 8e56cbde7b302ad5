"""stackops tasks: one invoke task per command of the ImpactBot v2 data management guide.

Thin wiring only: each task lives in stackops.cli.<capability>, which parses flags, calls one
capability from the helper library and renders the result. `invoke --list` shows them all.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Collection, task

ROOT = Path(__file__).resolve().parent
for _path in (ROOT, ROOT / "lib"):  # ci/ beside this file; lib/ works before `pip install -e .` too
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from stackops.cli import ENV_HELP, guarded, reporter, runtime, settings  # noqa: E402
from stackops.cli import backup as backup_tasks  # noqa: E402
from stackops.cli import check as check_tasks  # noqa: E402
from stackops.cli import db as db_tasks  # noqa: E402
from stackops.cli import env as env_tasks  # noqa: E402
from stackops.cli import migrate as migrate_tasks  # noqa: E402
from stackops.cli import monitor as monitor_tasks  # noqa: E402
from stackops.cli import offsite as offsite_tasks  # noqa: E402
from stackops.cli import pitr as pitr_tasks  # noqa: E402
from stackops.cli import report as report_tasks  # noqa: E402
from stackops.cli import restore as restore_tasks  # noqa: E402
from stackops.cli import update as update_tasks  # noqa: E402
from stackops.errors import ProtectedEnvironment  # noqa: E402


@task(help={"env": ENV_HELP})
@guarded
def demo(c, env=None):
    """The main job, end to end: up, migrate, sample data, full backup, verify it, list backups."""
    from stackops.backup import create_backup  # capabilities load psycopg: see stackops.cli
    from stackops.cli.backup import print_list
    from stackops.errors import VerifyFailed
    from stackops.migrate.engine import apply as apply_migrations
    from stackops.seed import seed_sample_data
    from stackops.verify import verify_backup

    s = settings(c, env)
    if s.env.protected:  # demo applies migrations and loads sample data without asking
        raise ProtectedEnvironment(f"the demo does not run in protected environment {s.env.name!r}: run it in dev "
                                   "or test; in production use env.up, migrate.apply and backup")
    report = reporter()
    report.step(f"demo on environment {s.env.name}: bring it up")
    rt = runtime(s, report)
    rt.up(report)
    env_tasks.show_status(rt, s, as_json=False)
    report.step("apply the ImpactBot v2 migrations (lint, pre-migration backup, lock, one transaction each)")
    apply_migrations(s, rt, report=report)
    report.step("load the sample data: test users, chats, indicators, measurements, upload files")
    seed_sample_data(s, rt, report=report)
    report.step("take a full backup (database + uploads, one point in time)")
    backup = create_backup(s, rt, kind="full", report=report)
    report.step(f"verify {backup.id} by restoring it into a scratch database")
    result = verify_backup(s, rt, backup.id, report=report)
    report.step("list backups")
    print_list(s)
    if not result.ok:
        raise VerifyFailed(f"the demo's backup failed verification: {result.detail}")


for offsite_task in (offsite_tasks.push, offsite_tasks.pull, offsite_tasks.prune_remote):
    backup_tasks.ns.add_task(offsite_task)

ns = Collection()
ns.add_task(demo)
ns.add_task(env_tasks.doctor)
ns.add_task(check_tasks.check)
ns.add_task(update_tasks.update)
ns.add_task(update_tasks.predeploy)
ns.add_task(report_tasks.report)
for sub in (env_tasks, backup_tasks, restore_tasks, migrate_tasks, db_tasks, monitor_tasks, pitr_tasks):
    ns.add_collection(sub.ns)
if (ROOT / "ci").is_dir():  # images.*: stand-in images for machines without a registry (the ops image has no ci/)
    from ci.tasks import ns as images_ns

    ns.add_collection(images_ns)
ns.configure({"stackops_root": str(ROOT)})
