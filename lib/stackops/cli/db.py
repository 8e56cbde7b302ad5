"""db.seed (test users and sample data, refused when protected), db.shell and db.url.

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

import sys

from invoke import Collection, task

from stackops.cli import ENV_HELP, JSON_HELP, YES_HELP, confirm, guarded, print_json, reporter, runtime, settings, table
from stackops.errors import UsageError


def _whole(flag: str, value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise UsageError(f"--{flag} {value!r} is not a whole number: pass e.g. --{flag} 1") from None


@task(help={"scale": "size multiplier: 2 organisations and 8 users per unit (default 1)",
            "seed": "random seed: the same seed gives the same data (default 0)",
            "env": ENV_HELP, "json": JSON_HELP})
@guarded
def seed(c, scale=None, seed=None, env=None, json=False):
    """Load test users and sample data (replacing earlier sample data); refused in protected environments."""
    from stackops.seed import seed_sample_data

    s = settings(c, env)
    report = reporter(json)
    result = seed_sample_data(s, runtime(s, report), scale=_whole("scale", 1 if scale is None else scale),
                              seed=_whole("seed", 0 if seed is None else seed),
                              report=report)
    if json:
        print_json(result)
        return
    rows = [[k, getattr(result, k)] for k in ("organizations", "users", "conversations", "messages", "uploads",
                                               "indicators", "measurements")]
    print(table(["sample data", "rows"], rows))
    print(f"seed {result.seed}, scale {result.scale}, dates relative to {result.anchor}; "
          f"upload files in {result.uploads_folder}")


@task(help={"env": ENV_HELP, "write": "allow writes in a protected environment (asks for its name, or --yes)",
            "yes": YES_HELP})
@guarded
def shell(c, env=None, write=False, yes=False):
    """psql on the environment's database; read-only in a protected environment unless --write."""
    from invoke import Exit

    from stackops.dbshell import session, write_plan
    from stackops.proc import interactive

    s = settings(c, env)
    if write and s.env.protected:
        confirm(write_plan(s), yes)  # the one flow: --yes, or the environment's name typed at a terminal
    terminal = sys.stdin.isatty()
    cmd, read_only = session(s, runtime(s, None), write=write, terminal=terminal)
    if read_only:
        print(f"read-only session on {s.env.db_name} of protected environment {s.env.name} (the guide: "
              "\"Never edit production data directly\"); --write to change data", file=sys.stderr)
    code = interactive(cmd)
    if code != 0:
        raise Exit(code=code)


@task(help={"env": ENV_HELP, "show_password": "include the password (it is then on your screen and in history)"})
@guarded
def url(c, env=None, show_password=False):
    """Print a postgresql:// connection string for tools (the password only with --show-password)."""
    from stackops.dbshell import url as make_url

    s = settings(c, env)
    print(make_url(runtime(s, None), show_password=show_password))
    if not show_password:
        print("(no password in it: --show-password adds it)", file=sys.stderr)


ns = Collection("db")
ns.add_task(seed)
ns.add_task(shell)
ns.add_task(url)
