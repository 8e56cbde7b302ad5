"""Every error stackops reports, and the one table of exit codes.

One root, ``StackopsError``; a base per domain (usage, environment, backup, restore, migration,
check); each class that has an exit code of its own binds it once, in its class line
(``class BackupCorrupt(BackupError, code=7)``), the way psycopg's errors bind their SQLSTATE. A
subclass without ``code=`` shares its parent's. Binding a code twice fails at import, so the table
below (``exit_codes()``, also printed in the README) can never say two things for one number.

The cli turns an error into one line on stderr (``stackops: <message>``) and its exit code.
"""

from __future__ import annotations

from typing import ClassVar

INTERRUPTED = 130  # Ctrl-C: the shell's convention (128 + SIGINT); not an exception class of ours

_REGISTRY: dict[int, type[StackopsError]] = {}


class StackopsError(Exception):
    """Any other failure (its message says what, why and what to do)."""

    exit_code: ClassVar[int] = 1

    def __init_subclass__(cls, code: int | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code is None:
            return
        if code in _REGISTRY or code in (0, 1, INTERRUPTED) or not 0 < code < 126:
            owner = _REGISTRY.get(code, StackopsError).__name__
            raise TypeError(f"exit code {code} of {cls.__name__} is already {owner}'s (or reserved)")
        _REGISTRY[code] = cls
        cls.exit_code = code


def exit_codes() -> list[tuple[int, str, str]]:
    """(code, class name, meaning) for every bound exit code, 1 and 130 included, sorted by code."""
    rows = [(1, StackopsError.__name__, _doc(StackopsError))]
    rows += [(code, cls.__name__, _doc(cls)) for code, cls in _REGISTRY.items()]
    rows.append((INTERRUPTED, "KeyboardInterrupt", "Interrupted (Ctrl-C); what was half-done was undone."))
    return sorted(rows)


def _doc(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


# ----- usage -------------------------------------------------------------------------------------
class UsageError(StackopsError, code=2):
    """Bad input: a configuration value, a flag or a name (the message names it and what is accepted)."""


class ConfigError(UsageError):
    """The configuration is invalid (names the key and the accepted values)."""


# ----- the machine and the environment -----------------------------------------------------------
class PrerequisiteError(StackopsError, code=3):
    """A program or package is missing (the message names the command that installs it)."""


class RuntimeRefused(StackopsError, code=4):
    """The environment's runtime cannot do this (e.g. start or stop an external database)."""


class LockBusy(StackopsError, code=5):
    """Another stackops operation holds this environment's lock; nothing was started."""


class ProtectedEnvironment(StackopsError, code=6):
    """Refused in a protected environment: not confirmed, or forbidden by the guide."""


class ServiceError(StackopsError, code=13):
    """A service did not start, stop or answer (the database server down, a container unhealthy)."""


class DatabaseUnavailable(ServiceError):
    """The database cannot be reached (the message says how to start it)."""


def last_line(output: str | bytes) -> str:
    """The last line a command wrote (its error, usually), for a one-line message."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    return (text.strip().splitlines() or ["no error output"])[-1]


class CommandFailed(StackopsError):
    """An external command exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{argv[0]} exited with {returncode}: {last_line(stderr)}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class StorageFull(StackopsError, code=19):
    """A filesystem filled up or lacks room; what was being written was removed, nothing else was touched."""


# ----- backups -----------------------------------------------------------------------------------
class BackupError(StackopsError, code=15):
    """A backup could not be taken (nothing incomplete was kept)."""


class BackupCorrupt(BackupError, code=7):
    """A backup failed its checks (checksums, sizes, manifest, completeness); nothing was touched."""


class BackupNotFound(BackupError, code=8):
    """No backup by that name in this environment's backups folder."""


class VersionMismatch(BackupError, code=14):
    """PostgreSQL versions do not fit (client older than server, backup newer than server or code)."""


class VerifyFailed(BackupError, code=12):
    """A backup failed verification (restored into a scratch database and checked)."""


# ----- restores ----------------------------------------------------------------------------------
class RestoreError(StackopsError, code=16):
    """A restore did not complete; the live data was left (or put back) as it was."""


# ----- migrations --------------------------------------------------------------------------------
class MigrationError(StackopsError, code=17):
    """Migrations are not in a state to act on (the message says how to get there)."""


class MigrationNameError(UsageError):
    """A migration name outside [a-z0-9_]."""


class MigrationFailed(MigrationError, code=9):
    """A migration failed; the message names file, line and what the automatic rollback did."""

    def __init__(self, message: str, *, filename: str, line: int | None, undo: str) -> None:
        super().__init__(message)
        self.filename = filename
        self.line = line
        self.undo = undo


class DriftError(MigrationError, code=10):
    """An applied migration file changed on disk after it was applied."""


class LintRefused(MigrationError, code=11):
    """squawk reported findings in pending migrations and --strict was given."""


class SeedError(StackopsError):
    """Sample data cannot be loaded (the message says what is missing)."""


# ----- checks ------------------------------------------------------------------------------------
class CheckFailed(StackopsError, code=18):
    """One or more checks failed (integrity, deployment); the table above the line says which."""


# ----- offsite copies and point-in-time recovery ---------------------------------------------------
class OffsiteError(StackopsError, code=20):
    """An offsite copy could not be pushed, pulled or listed (remote, rclone or transfer); nothing local was touched."""


class IdentityError(StackopsError, code=21):
    """An encrypted backup cannot be opened: no age identity given, or not one of its recipients; nothing touched."""


class PitrError(StackopsError, code=22):
    """Point-in-time recovery could not act (archiving, pgBackRest, target outside the window); live left serving."""


# ----- updates and the pre-deploy gate -------------------------------------------------------------
class UpdateRefused(StackopsError, code=40):
    """An update's preflight refused (config, engine, lock, disk, migrations, versions); nothing was changed."""


class UpdateFailed(StackopsError, code=41):
    """An update failed and was rolled back automatically: images and data as before (the summary says what)."""


class RollbackFailed(StackopsError, code=42):
    """An update failed and so did its rollback; the journal is kept and the next update or env.up finishes it."""


class PredeployFailed(StackopsError, code=43):
    """The pre-deploy gate failed (squawk, compose files, target check, backup age); the table says which."""
