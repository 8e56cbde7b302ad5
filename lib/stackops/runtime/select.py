"""Pick the runtime of an environment: the configured kind, or for ``auto`` compose when a Docker
engine answers and local otherwise (and local for good once the environment's data lives there)."""

from __future__ import annotations

from stackops.config import Settings
from stackops.errors import ConfigError
from stackops.report import Reporter
from stackops.runtime.base import Runtime
from stackops.runtime.compose import ComposeRuntime
from stackops.runtime.docker import engine_answers
from stackops.runtime.external import ExternalRuntime
from stackops.runtime.local import LOCAL_MARKER, LocalRuntime

KINDS: dict[str, type[Runtime]] = {"local": LocalRuntime, "external": ExternalRuntime, "compose": ComposeRuntime}


def resolve_kind(settings: Settings) -> tuple[str, str]:
    """The runtime kind to use and why (``auto`` picks compose when it can, else local)."""
    kind = settings.env.runtime
    if kind != "auto":
        return kind, f"runtime {kind} (from config)"
    if (settings.env.state_dir / LOCAL_MARKER).is_file():
        # data lives in a local cluster already: starting Docker later must not hide it behind an empty stack
        return "local", f"runtime auto -> local: this environment's data is in {settings.env.state_dir}"
    ok, why = engine_answers()
    return ("compose", f"runtime auto -> compose: {why}") if ok else ("local", f"runtime auto -> local: {why}")


def make_runtime(settings: Settings, report: Reporter | None = None) -> Runtime:
    """Build the runtime for the environment in ``settings`` and say which one was picked."""
    kind, why = resolve_kind(settings)
    if report is not None and settings.env.runtime == "auto":
        report.info(why)
    if kind not in KINDS:
        raise ConfigError(f"config key stackops.envs.{settings.env.name}.runtime has value {kind!r}: "
                          f"accepted values are auto, {', '.join(KINDS)}")
    return KINDS[kind](settings)
