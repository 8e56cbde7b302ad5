"""Task wiring shared by tasks.py: config, runtime, output, error handling. Imports stay light."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from invoke import Exit

from stackops.errors import StackopsError

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
            raise Exit("stackops: interrupted; nothing was left half-done", code=130) from None

    return wrapper  # type: ignore[return-value]


def settings(c: Any, env: str | None) -> Any:
    from stackops.config import load

    return load(c.config.stackops, env, Path(c.config.stackops_root))


def reporter(json_out: bool = False) -> Any:
    """Progress for a task. It always goes to stderr, so ``--json`` output on stdout stays parseable."""
    from stackops.report import Reporter

    return Reporter(stream=sys.stderr)


def runtime(s: Any, report: Any) -> Any:
    from stackops.runtime import make_runtime

    return make_runtime(s, report)


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


ENV_HELP = "environment: dev, test or prod (default: stackops.default_env)"
JSON_HELP = "print machine-readable JSON on stdout"
