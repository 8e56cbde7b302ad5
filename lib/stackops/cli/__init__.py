"""Task wiring shared by tasks.py: config, runtime, output, error handling, and the one flow every
destructive task goes through (``proceed``).

Import cost: ``invoke --list`` imports every cli module, so these modules import the capabilities
they call inside their task bodies. psycopg (~300 ms), redis (~225 ms) and the docker SDK (~155 ms)
would otherwise be loaded to print a list of tasks (measured with ``python -X importtime``); so are
stackops.config and stackops.report here.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from invoke import Exit

from stackops.errors import INTERRUPTED, ProtectedEnvironment, StackopsError

if TYPE_CHECKING:  # loaded when a task runs: `invoke --list` needs neither (see above)
    from stackops.config import Settings
    from stackops.report import Plan, Reporter

F = TypeVar("F", bound=Callable[..., Any])


def guarded(fn: F) -> F:
    """Turn a StackopsError into one line on stderr and its exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StackopsError as exc:
            raise Exit(f"stackops: {exc}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("stackops: interrupted; nothing was left half-done", code=INTERRUPTED) from None
        except BrokenPipeError:  # `invoke backup.list | head`: the reader has what it wanted
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's last flush does not fail too
            raise Exit(code=0) from None

    return wrapper  # type: ignore[return-value]


def settings(c: Any, env: str | None) -> Settings:
    from stackops.config import load

    return load(c.config.stackops, env, Path(c.config.stackops_root))


def reporter(json_out: bool = False) -> Reporter:
    """Progress for a task. It always goes to stderr, so ``--json`` output on stdout stays parseable; a
    live progress line only on a terminal and never with ``--json`` (plain lines then)."""
    import atexit

    from stackops.report import Reporter

    report = Reporter(stream=sys.stderr, live=not json_out)
    atexit.register(report.close)  # a failure in the middle of an item leaves no live line behind
    return report


def runtime(s: Settings, report: Reporter | None) -> Any:
    """The environment's runtime; every task that touches an environment comes through here, so a swap
    that a killed restore left half-done is completed or undone first (``stackops.journal``)."""
    from stackops.runtime.select import make_runtime  # the runtimes import psycopg and docker: see above

    rt = make_runtime(s, report)
    if (s.env.backups_dir / ".restore-journal.json").exists():
        from stackops.journal import recover
        from stackops.report import Reporter

        recover(s, rt, report or Reporter(stream=sys.stderr))
    if (s.env.backups_dir / ".pitr-local-journal.json").exists():  # the same, local runtime (data folders)
        from stackops.pitr import recover_swap
        from stackops.report import Reporter

        recover_swap(s, rt, report or Reporter(stream=sys.stderr))
    if (s.env.backups_dir / ".pitr-journal.json").exists():  # a point-in-time restore killed in its swap
        from stackops.pitr_compose import recover as recover_pitr
        from stackops.report import Reporter

        recover_pitr(s, rt, report or Reporter(stream=sys.stderr))
    return rt


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def print_json(data: Any) -> None:
    print(json.dumps(_jsonable(data), indent=2, sort_keys=True, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----- the destructive-operation flow ------------------------------------------------------------
def _show(plan: Plan, stream: Any) -> None:
    print(f"plan: {plan.action}", file=stream)
    for step in plan.steps:
        print(f"  - {step}", file=stream)
    for item in plan.destroys:
        print(f"  replaces or deletes: {item}", file=stream)
    for warning in plan.warnings:
        print(f"  WARNING: {warning}", file=stream)


def confirm(plan: Plan, yes: bool) -> None:
    """A protected environment (or a plan that asks for it with ``always_confirm``) goes on only with
    ``--yes`` or, at a terminal, the environment's name typed (``yes`` too when not protected); no
    terminal, a wrong answer or end of input refuse with one line. Other plans go on."""
    if yes or not (plan.protected or plan.always_confirm):
        return
    where = f"in protected environment {plan.env!r}" if plan.protected else f"in environment {plan.env!r}"
    accepted = {plan.env} if plan.protected else {plan.env, "yes"}
    typed = "the environment's name" if plan.protected else "the environment's name or yes"
    if not sys.stdin.isatty():
        if plan.always_confirm:  # what would be confirmed is shown all the same
            _show(plan, sys.stderr)
        raise ProtectedEnvironment(
            f"{plan.action} {where} needs confirmation: pass --yes (look at the plan first with --dry-run), "
            f"or run it at a terminal and type {typed}"
        )
    _show(plan, sys.stderr)
    try:
        answer = input(f"{plan.action} {where}. Type {typed} to go on: ")
    except EOFError:
        raise ProtectedEnvironment(f"{plan.action} cancelled: no answer at the prompt (end of input); "
                                   "nothing was touched") from None
    if answer.strip() not in accepted:
        wanted = repr(plan.env) if plan.protected else f"{plan.env!r} or 'yes'"
        raise ProtectedEnvironment(f"{plan.action} cancelled: the {'name' if plan.protected else 'answer'} "
                                   f"typed was not {wanted}; nothing was touched")


def proceed(plan: Plan, *, yes: bool, dry_run: bool, as_json: bool = False) -> bool:
    """The one flow of every destructive task, after the capability built ``plan`` (every check that
    can run before acting has run): dry run -> print it, stop; nothing to do -> say so, stop;
    protected -> confirm. True: the task acts now (and the capability checks again under its lock)."""
    if dry_run:
        if as_json:
            print_json({"dry_run": True, **asdict(plan)})
        else:
            print(f"dry run: {plan.action}" if not plan.nothing_to_do else f"dry run: {plan.nothing_to_do}")
            print("\n".join(f"would {step}" for step in plan.steps))
            for what in [] if plan.nothing_to_do else plan.destroys:
                print(f"would delete or replace: {what}")
            for warning in plan.warnings:
                print(f"warning: {warning}")
        return False
    if plan.nothing_to_do:
        print(plan.nothing_to_do, file=sys.stderr)
        return False
    confirm(plan, yes)
    return True


ENV_HELP = "environment: dev, test or prod (default: stackops.default_env)"
JSON_HELP = "print machine-readable JSON on stdout"
YES_HELP = "confirm a destructive step in a protected environment without a prompt"
DRY_RUN_HELP = "run every check and print the plan; change nothing"
SKIP_SPACE_HELP = ("load even when the database server's disk looks too small for the copy (the estimate: the "
                   "database's size when backed up x1.25 + WAL + 64 MiB); a full server disk can stop PostgreSQL")
