"""One root exception; every domain raises a subclass. tasks.py turns them into one line + exit code."""

from __future__ import annotations


class StackopsError(Exception):
    """Root of every error stackops reports to a user: the message is one line (what, why, what to do)."""

    exit_code = 1


class ConfigError(StackopsError):
    """The configuration is invalid (names the key and the accepted values)."""

    exit_code = 2


class PrerequisiteError(StackopsError):
    """A program or package the operation needs is missing (names the install command)."""

    exit_code = 3


class RuntimeRefused(StackopsError):
    """The runtime cannot do this operation (e.g. lifecycle on an external database)."""

    exit_code = 4


class ServiceError(StackopsError):
    """A service failed to start, stop or answer."""


class CommandFailed(StackopsError):
    """An external command exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
        super().__init__(f"{argv[0]} exited with {returncode}: {tail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class LockBusy(StackopsError):
    """Another stackops operation holds the lock for this environment."""

    exit_code = 5


class ProtectedEnvironment(StackopsError):
    """A destructive operation on a protected environment was not confirmed."""

    exit_code = 6
