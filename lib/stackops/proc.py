"""The one subprocess wrapper: argv lists only, secrets in the environment, failures raised with output."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
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


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGKILL when stackops dies (kill -9 included), so a
    streaming pg_restore or pg_dump never outlives the process that reads or feeds it (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def spawn(cmd: Cmd, *, stdin: int | IO[Any] | None = None, stdout: int | IO[Any] | None = None,
          stderr: int | IO[Any] | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """Start without waiting, for streaming pipelines (pg_dump | zstd > file)."""
    try:
        return subprocess.Popen(cmd.argv, stdin=stdin, stdout=stdout, stderr=stderr, preexec_fn=_die_with_parent,
                                **cmd._kwargs())
    except FileNotFoundError as exc:
        raise PrerequisiteError(f"{cmd.argv[0]} not found: {exc.strerror}") from exc


def pipeline(cmds: list[Cmd], sink: IO[bytes] | None = None, on_chunk: Any = None,
             stdin_file: IO[bytes] | None = None) -> int:
    """Run ``cmds`` connected by OS pipes; stream the last one's stdout to ``sink`` (if given) calling
    ``on_chunk(chunk)`` for each block. Every process is checked; on any failure all are killed and
    CommandFailed names the first one that failed. Returns the bytes streamed."""
    procs: list[subprocess.Popen[bytes]] = []
    errs: list[IO[bytes]] = []
    total = 0
    try:
        prev: Any = stdin_file
        for i, cmd in enumerate(cmds):
            err = tempfile.TemporaryFile()
            errs.append(err)
            last = i == len(cmds) - 1
            out = subprocess.PIPE if (not last or sink is not None) else subprocess.DEVNULL
            p = spawn(cmd, stdin=prev, stdout=out, stderr=err)
            if prev is not None and prev is not stdin_file:
                prev.close()  # the child holds its own copy; ours must close so EOF propagates
            prev = p.stdout
            procs.append(p)
        if sink is not None:
            assert prev is not None
            while chunk := prev.read(1 << 20):
                sink.write(chunk)
                total += len(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
        for p in procs:
            p.wait()
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        raise
    finally:
        for p in procs:
            if p.stdout is not None:
                p.stdout.close()
    failed = [(p, cmd, err) for p, cmd, err in zip(procs, cmds, errs, strict=True) if p.returncode != 0]
    # a writer killed by SIGPIPE only shows that its reader failed: report the reader
    failed.sort(key=lambda f: f[0].returncode == -13)
    if failed:
        bad, bad_cmd, bad_err = failed[0]
        bad_err.seek(0)
        message = bad_err.read().decode(errors="replace")
        for e in errs:
            e.close()
        raise CommandFailed(bad_cmd.argv, bad.returncode, message)
    for e in errs:
        e.close()
    return total
