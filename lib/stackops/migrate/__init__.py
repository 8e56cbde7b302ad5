"""Schema migrations of the ImpactBot v2 database: files, lint, history, apply and rollback.

The guide's ``migration-workflow.sh`` (create, apply, check, rollback) as a capability:

- ``files``   — the migration file format (pure: parse, split statements, create from a template);
- ``lint``    — squawk over the up sections of the files about to run;
- ``history`` — the ``schema_migrations`` table and the status of every file against it;
- ``engine``  — apply (advisory lock, pre-migration backup, one transaction per migration,
  automatic rollback of a failed batch) and rollback (down sections or the pre-migration backup).

Tasks import the submodule they need inside their bodies; this package itself stays import-light.
"""

from __future__ import annotations

from stackops.errors import StackopsError


class MigrationError(StackopsError):
    """A migration file, the history or an operation on them is not in a state we can act on."""


class MigrationNameError(MigrationError):
    """A migration name outside [a-z0-9_]."""

    exit_code = 2


class DriftError(MigrationError):
    """An applied migration file changed on disk after it was applied."""

    exit_code = 7


class LintRefused(MigrationError):
    """squawk reported findings and ``--strict`` was given."""

    exit_code = 8


class MigrationFailed(MigrationError):
    """A statement of a migration failed; the message names file, line and what was rolled back."""

    exit_code = 9

    def __init__(self, message: str, *, filename: str, line: int | None, undo: str) -> None:
        super().__init__(message)
        self.filename = filename
        self.line = line
        self.undo = undo
