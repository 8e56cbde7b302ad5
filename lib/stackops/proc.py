"""The one subprocess wrapper: argv lists only, secrets in the environment, failures raised with output."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
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
        # no input: stdin is /dev/null, never the user's terminal (``docker exec -i`` would read the
        # answer typed for our own prompt)
        kwargs = cmd._kwargs()
        if input is None:
            kwargs["stdin"] = subprocess.DEVNULL
        proc = subprocess.run(cmd.argv, input=input, capture_output=True, timeout=timeout, check=False, **kwargs)
    except FileNotFoundError as exc:
        raise PrerequisiteError(f"{cmd.argv[0]} not found: {exc.strerror}") from exc
    if check and proc.returncode != 0:
        raise CommandFailed(cmd.argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def interactive(cmd: Cmd) -> int:
    """Run with this process's stdin, stdout and stderr (a shell for the operator); its exit code.
    Ctrl-C goes to the child (psql cancels its query) and does not stop stackops meanwhile."""
    import signal

    try:
        proc = subprocess.Popen(cmd.argv, **cmd._kwargs())
    except FileNotFoundError as exc:
        raise PrerequisiteError(f"{cmd.argv[0]} not found: {exc.strerror}") from exc
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


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


def spawn(cmd: Cmd, *, stdin: int | IO[Any] | None = subprocess.DEVNULL, stdout: int | IO[Any] | None = None,
          stderr: int | IO[Any] | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """Start without waiting, for streaming pipelines (pg_dump | zstd > file)."""
    try:
        return subprocess.Popen(cmd.argv, stdin=stdin, stdout=stdout, stderr=stderr, preexec_fn=_die_with_parent,
                                **cmd._kwargs())
    except FileNotFoundError as exc:
        raise PrerequisiteError(f"{cmd.argv[0]} not found: {exc.strerror}") from exc


def io_counters(pid: int) -> tuple[int, int] | None:
    """(bytes read, bytes written) by process ``pid`` so far (Linux /proc/<pid>/io), None when unreadable."""
    try:
        fields = dict(line.split(": ", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return int(fields["rchar"]), int(fields["wchar"])
    except (OSError, KeyError, ValueError):
        return None


class _Watcher(threading.Thread):
    """Calls ``watch(read, written)`` with the first process's I/O counters about five times a second."""

    def __init__(self, pid: int, watch: Callable[[int, int], None]) -> None:
        super().__init__(daemon=True, name="stackops-progress")
        self.pid, self.watch, self.stopped = pid, watch, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            counters = io_counters(self.pid)
            if counters is None:
                return
            self.watch(*counters)

    def finish(self) -> None:
        counters = io_counters(self.pid)  # before the caller reaps the process
        self.stopped.set()
        self.join()
        if counters is not None:
            self.watch(*counters)


def pipeline(cmds: list[Cmd], sink: IO[bytes] | None = None, on_chunk: Any = None,
             stdin_file: IO[bytes] | None = None, watch: Callable[[int, int], None] | None = None) -> int:
    """Run ``cmds`` connected by OS pipes; stream the last one's stdout to ``sink`` (if given) calling
    ``on_chunk(chunk)`` for each block. ``watch(read, written)``, for progress, gets the first process's
    byte counters while it runs (from another thread). Every process is checked; on any failure all are
    killed and CommandFailed names the first one that failed. Returns the bytes streamed."""
    procs: list[subprocess.Popen[bytes]] = []
    errs: list[IO[bytes]] = []
    total = 0
    watcher: _Watcher | None = None
    try:
        prev: Any = stdin_file
        for i, cmd in enumerate(cmds):
            err = tempfile.TemporaryFile()
            errs.append(err)
            last = i == len(cmds) - 1
            out = subprocess.PIPE if (not last or sink is not None) else subprocess.DEVNULL
            p = spawn(cmd, stdin=prev if prev is not None else subprocess.DEVNULL, stdout=out, stderr=err)
            if prev is not None and prev is not stdin_file:
                prev.close()  # the child holds its own copy; ours must close so EOF propagates
            prev = p.stdout
            procs.append(p)
            if i == 0 and watch is not None:
                watcher = _Watcher(p.pid, watch)
                watcher.start()
        if sink is not None:
            assert prev is not None
            while chunk := prev.read(1 << 20):
                sink.write(chunk)
                total += len(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
        if watcher is not None:
            # the last counters are read once the first process has exited but before it is reaped
            while os.waitid(os.P_PID, procs[0].pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
                time.sleep(0.05)
            watcher.finish()
            watcher = None
        for p in procs:
            p.wait()
    except BaseException:
        if watcher is not None:
            watcher.stopped.set()
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
