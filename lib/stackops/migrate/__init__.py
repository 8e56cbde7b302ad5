"""Schema migrations of the ImpactBot v2 database: files, lint, history, apply and rollback.

The guide's ``migration-workflow.sh`` (create, apply, check, rollback) as a capability:

- ``files``   — the migration file format (pure: parse, split statements, create from a template);
- ``lint``    — squawk over the up sections of the files about to run;
- ``history`` — the ``schema_migrations`` table and the status of every file against it;
- ``engine``  — apply (advisory lock, pre-migration backup, one transaction per migration,
  automatic rollback of a failed batch) and rollback (down sections or the pre-migration backup).

Its errors live in ``stackops.errors`` (one table of exit codes) and are re-exported here.
"""

from __future__ import annotations

from stackops.errors import DriftError, LintRefused, MigrationError, MigrationFailed, MigrationNameError

__all__ = ["DriftError", "LintRefused", "MigrationError", "MigrationFailed", "MigrationNameError"]
