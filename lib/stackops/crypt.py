"""Encryption at rest with age (Debian's ``age``): encrypt to public recipients, decrypt with an identity.

Recipients are public keys, so they may appear in argv and in manifests; an identity is a private key
and only its *path* is ever handled here (never its contents, never logged). ``check_identity`` refuses
before anything is downloaded or written when the identity is missing or is not one of the recipients.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from stackops.errors import BackupCorrupt, CommandFailed, IdentityError, StorageFull
from stackops.proc import Cmd, run, which
from stackops.report import human_bytes

INSTALL = "apt-get install -y age"


def _age() -> str:
    return which("age", INSTALL)


NO_SPACE = ("no space left on device", "disk quota exceeded")  # age's words (Go's) for ENOSPC / EDQUOT
OVERHEAD = 1 << 20  # age's header and per-chunk tags, rounded up generously (16 bytes per 64 KiB chunk)


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem ``path`` is on (``path`` need not exist)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def encrypt(src: Path, dst: Path, recipients: Sequence[str]) -> None:
    """``src`` encrypted to every recipient, written to ``dst`` (binary age format). A write that fails for
    lack of space raises StorageFull naming the filesystem, ``dst`` removed: age's stderr says so on a line
    before its last (a link to its issue tracker), and when it does not, too little free space for ``src``
    is taken as the cause."""
    argv = [_age(), "--encrypt"]
    for r in recipients:
        argv += ["--recipient", r]
    try:
        run(Cmd([*argv, "--output", str(dst), str(src)]))
    except CommandFailed as exc:
        dst.unlink(missing_ok=True)
        free = shutil.disk_usage(dst.parent).free if dst.parent.exists() else 0
        size = src.stat().st_size if src.exists() else 0
        if any(m in exc.stderr.lower() for m in NO_SPACE) or free < size + OVERHEAD:
            raise StorageFull(f"the filesystem of {dst.parent} (mounted at {mount_point(dst.parent)}) is full: "
                              f"encrypting {src.name} ({human_bytes(size)}) needs about that much and "
                              f"{human_bytes(free)} is free; what was being written was removed; free space "
                              "there and try again") from None
        raise


def decrypt(src: Path, dst: Path, identity: Path, what: str) -> None:
    """``src`` decrypted with ``identity`` into ``dst``. A wrong identity raises IdentityError, a damaged
    file BackupCorrupt (age authenticates every chunk, so a flipped byte never decrypts)."""
    try:
        run(Cmd([_age(), "--decrypt", "--identity", str(identity), "--output", str(dst), str(src)]))
    except CommandFailed as exc:
        dst.unlink(missing_ok=True)
        if "no space left on device" in exc.stderr.lower():
            raise StorageFull(f"the filesystem of {dst.parent} is full while decrypting {what}: what was being "
                              "written was removed; free space and try again") from None
        if "no identity matched" in exc.stderr:
            raise IdentityError(f"{what} is encrypted for other recipients than the identity {identity}: "
                                "give the matching identity file (stackops.offsite.identity_file or --identity)"
                                "; nothing was touched") from None
        raise BackupCorrupt(f"{what} cannot be decrypted ({str(exc).split(': ', 1)[-1]}): the copy is damaged; "
                            "nothing was touched") from None


def recipient_of(identity: Path) -> str | None:
    """The public key of an age identity file (None for an ssh key, which age-keygen cannot read)."""
    proc = run(Cmd([which("age-keygen", INSTALL), "-y", str(identity)]), check=False)
    if proc.returncode != 0:
        return None
    lines = proc.stdout.decode().split()
    return lines[0] if lines else None


def exposed(identity: Path) -> str:
    """A warning when the identity file can be read by other users than its owner ("" otherwise)."""
    try:
        mode = identity.stat().st_mode
    except OSError:
        return ""
    if mode & 0o077 == 0:
        return ""
    return (f"the age identity {identity} can be read by other users (mode {mode & 0o777:o}): anyone who can read "
            f"it can open every encrypted backup; `chmod 600 {identity}` (or keep it off this host)")


def check_identity(identity: Path | None, recipients: Sequence[str], what: str) -> Path:
    """The identity to decrypt ``what`` with, or IdentityError (one line) when it is not given, not a
    readable file, or an age identity that is not one of ``recipients``."""
    hint = "set stackops.offsite.identity_file (e.g. INVOKE_STACKOPS_OFFSITE_IDENTITY_FILE=/path) or pass --identity"
    if identity is None:
        raise IdentityError(f"{what} is encrypted with age and no identity file is configured: {hint}; "
                            "nothing was touched")
    if not identity.is_file():
        raise IdentityError(f"{what} is encrypted and the identity file {identity} does not exist: {hint}; "
                            "nothing was touched")
    try:
        identity.read_bytes()[:1]
    except OSError as exc:
        raise IdentityError(f"identity file {identity} cannot be read ({exc.strerror}); nothing was touched") from None
    public = recipient_of(identity)
    if public is not None and recipients and public not in recipients:
        raise IdentityError(f"{what} is encrypted for {len(recipients)} recipient(s) and the identity {identity} "
                            f"(public key {public[:16]}...) is not one of them: give the matching identity; "
                            "nothing was touched")
    return identity
