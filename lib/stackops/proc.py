"""The one subprocess wrapper: argv lists only, secrets in the environment, failures raised with output."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from stackops.errors import CommandFailed, PrerequisiteError


@dataclass(frozen=True)
class Cmd:
    """A command to run: argv, extra environment (secrets go here, never in argv), user and folder."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    cwd: Path | None = None

    def with_args(self, *args: str) -> Cmd:
        return Cmd([*self.argv, *args], self.env, self.user, self.cwd)

    def _kwargs(self) -> dict[str, Any]:
        env = {**os.environ, **self.env}
        kwargs: dict[str, Any] = {"env": env, "cwd": self.cwd}
        if self.user is not None:
            kwargs["user"] = self.user
            kwargs["group"] = self.user
            kwargs["extra_groups"] = []
            env["HOME"] = str(self.cwd or "/")
        return kwargs


def which(name: str, install_hint: str) -> str:
    """Absolute path of ``name`` on PATH, or a PrerequisiteError that names the install command."""
    found = shutil.which(name)
    if found is None:
        raise PrerequisiteError(f"{name} not found on PATH: install it with `{install_hint}`")
    return found


def run(cmd: Cmd, *, input: bytes | None = None, check: bool = True,
        timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run to completion, capturing output; raise CommandFailed on a non-zero exit when ``check``."""
    try:
        proc = subprocess.run(cmd.argv, input=input, capture_output=True, timeout=timeout,
                              check=False, **cmd._kwargs())
    except FileNotFoundError as exc:
        raise PrerequisiteError(f"{cmd.argv[0]} not found: {exc.strerror}") from exc
    if check and proc.returncode != 0:
        raise CommandFailed(cmd.argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def text(cmd: Cmd, **kwargs: Any) -> str:
    """Run and return stdout as stripped text."""
    return run(cmd, **kwargs).stdout.decode(errors="replace").strip()


def spawn(cmd: Cmd, *, stdin: int | IO[Any] | None = None, stdout: int | IO[Any] | None = None,
          stderr: int | IO[Any] | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """Start without waiting, for streaming pipelines (pg_dump | zstd > file)."""
    try:
        return subprocess.Popen(cmd.argv, stdin=stdin, stdout=stdout, stderr=stderr, **cmd._kwargs())
    except FileNotFoundError as exc:
        raise PrerequisiteError(f"{cmd.argv[0]} not found: {exc.strerror}") from exc
