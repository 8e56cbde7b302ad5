"""A real SFTP server for offsite tests: Debian's sshd on a free loopback port, with a throwaway host
key and client key in a temporary folder, run as a child process and killed in teardown. Plus age keys."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import free_port

SSHD = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class Sftp:
    port: int
    folder: Path      # the remote folder, as the server sees it (a local path: tests may damage files there)
    remote: str       # the rclone connection string for stackops.offsite.remote
    server: list[subprocess.Popen[bytes]] = field(default_factory=list)  # the running sshd (one, or none)
    config: Path | None = None

    def stop(self) -> None:
        """The server goes down hard: sshd and every session it forked (an open transfer included) killed."""
        for proc in self.server:
            for pid in _descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        self.server.clear()

    def start(self) -> None:
        """The server back on the same port, with the same keys."""
        assert self.config is not None and not self.server
        self.server.append(_sshd(self.config, self.port))

    def env(self) -> dict[str, str]:
        return {"INVOKE_STACKOPS_OFFSITE_REMOTE": self.remote, "INVOKE_STACKOPS_OFFSITE_PATH": str(self.folder)}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().split(")")[-1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _sshd(config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sshd did not start: {proc.stderr.read() if proc.stderr else b''!r}")
        time.sleep(0.05)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(name="sftp")
def sftp_fixture(tmp_path: Path) -> Iterator[Sftp]:
    if not SSHD.exists():
        pytest.fail("sshd is missing: apt-get install -y openssh-server (.ci/run installs it)")
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    _keygen(keys / "host_key")
    _keygen(keys / "client_key")
    (keys / "authorized_keys").write_text((keys / "client_key.pub").read_text())
    port = free_port()
    config = keys / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {keys / 'host_key'}", "PidFile none",
        f"AuthorizedKeysFile {keys / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
        "Subsystem sftp internal-sftp", "LogLevel ERROR", "",
    ]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    known = keys / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {(keys / 'host_key.pub').read_text().split(' ')[0]} "
                     f"{(keys / 'host_key.pub').read_text().split(' ')[1]}\n")
    sftp = Sftp(port, tmp_path / "sftp-remote",
                f":sftp,host=127.0.0.1,port={port},user=root,key_file={keys / 'client_key'},"
                f"known_hosts_file={known},shell_type=unix,md5sum_command=md5sum,sha1sum_command=sha1sum:",
                config=config)
    sftp.folder.mkdir()
    sftp.start()
    try:
        yield sftp
    finally:
        sftp.stop()


@dataclass(frozen=True)
class AgeKey:
    identity: Path
    recipient: str


def age_key(folder: Path, name: str = "key") -> AgeKey:
    path = folder / f"{name}.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    os.chmod(path, 0o600)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return AgeKey(path, public)


def fake_set(folder: Path, backup_id: str, started: datetime, kind: str = "db", payload: bytes = b"") -> Path:
    """A complete, sealed backup set with one real file (no database needed): what retention, push,
    pull and prune act on, byte for byte."""
    from stackops.backupset import MANIFEST, seal

    path = folder / backup_id
    path.mkdir(parents=True, mode=0o700)
    data = payload or os.urandom(2048)
    (path / "database.dump.zst").write_bytes(data)
    manifest = {"format": "stackops-backup/1", "id": backup_id, "kind": kind, "started_at": started.isoformat(),
                "duration_s": 1.0, "compression": "zstd", "row_counts": {},
                "files": {"database.dump.zst": {"role": "database", "size": len(data),
                                                "sha256": hashlib.sha256(data).hexdigest()}}}
    (path / MANIFEST).write_text(json.dumps(seal(manifest)))
    return path


def offsite_env(backups: Path, state: Path, remote: str, remote_path: Path, env: str = "test",
                **offsite: str) -> dict[str, str]:
    """Environment variables for `invoke ... --env env` over ``backups`` (local runtime, no database
    needed for backup.list / prune / push / pull) with an offsite remote."""
    prefix = f"INVOKE_STACKOPS_ENVS_{env.upper()}_"
    return {**os.environ, f"{prefix}BACKUPS_DIR": str(backups), f"{prefix}RUNTIME": "local",
            f"{prefix}STATE_DIR": str(state), "INVOKE_STACKOPS_OFFSITE_REMOTE": remote,
            "INVOKE_STACKOPS_OFFSITE_PATH": str(remote_path),
            **{f"INVOKE_STACKOPS_OFFSITE_{k.upper()}": v for k, v in offsite.items()}}
