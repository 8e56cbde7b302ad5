"""db.seed: test users and sample data for development (refused in a protected environment).

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

from invoke import Collection, task

from stackops.cli import ENV_HELP, JSON_HELP, guarded, print_json, reporter, runtime, settings, table
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
def seed(c, scale=1, seed=0, env=None, json=False):
    """Load test users and sample data (replacing earlier sample data); refused in protected environments."""
    from stackops.seed import seed_sample_data

    s = settings(c, env)
    report = reporter(json)
    result = seed_sample_data(s, runtime(s, report), scale=_whole("scale", scale), seed=_whole("seed", seed),
                              report=report)
    if json:
        print_json(result)
        return
    rows = [[k, getattr(result, k)] for k in ("organizations", "users", "conversations", "messages", "uploads",
                                               "indicators", "measurements")]
    print(table(["sample data", "rows"], rows))
    print(f"seed {result.seed}, scale {result.scale}, dates relative to {result.anchor}; "
          f"upload files in {result.uploads_folder}")


ns = Collection("db")
ns.add_task(seed)
