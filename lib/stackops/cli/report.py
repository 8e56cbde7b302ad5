"""report: the self-contained HTML status page (inline SVG plots), written under the backups folder.

Capabilities (and matplotlib) are imported inside the task body, to keep `invoke --list` fast."""

from __future__ import annotations

import sys
import time

from invoke import task

from stackops.cli import ENV_HELP, guarded, runtime, settings


@task(help={"env": ENV_HELP, "open": "open the page in the default browser afterwards"})
@guarded
def report(c, env=None, open=False):
    """Status page: backups over time, last verified, retention, table sizes and growth, migrations."""
    from stackops.statusreport import write_report

    s = settings(c, env)
    started = time.monotonic()
    path = write_report(s, runtime(s, None))
    print(path)
    print(f"report written in {time.monotonic() - started:.1f}s", file=sys.stderr)
    if open:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            print(f"no browser found: open {path} yourself", file=sys.stderr)
