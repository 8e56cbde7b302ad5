"""The migration file format (pure logic, no database).

A migration is ``migrations/YYYYMMDDHHMMSS_name.sql`` (the guide's date-only ``YYYYMMDD_name.sql``
is read too) with two sections::

    -- migrate:no-transaction        (optional header: run outside a transaction)
    -- migrate:up
    CREATE TABLE ...;
    -- migrate:down
    DROP TABLE ...;

dbmate's ``-- migrate:up transaction:false`` is accepted as the same header. The checksum covers
the whole file with line endings normalised (CRLF -> LF, BOM dropped), so a checkout on another
platform is not "drift". Statements are split with a small SQL lexer (quotes, dollar quotes,
comments, ``BEGIN ATOMIC`` bodies) so a failing statement can be mapped back to its file line.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stackops.migrate import MigrationError, MigrationNameError

FILE_RE = re.compile(r"^(?P<version>\d{14}|\d{8})_(?P<name>[a-z0-9_]+)\.sql$")
NAME_RE = re.compile(r"^[a-z0-9_]{1,80}$")
LOOKS_LIKE = re.compile(r"^\d{8}(\d{6})?_.*\.sql", re.IGNORECASE)  # "...sql" in any case, anything after it
_MARKER = re.compile(r"^--\s*migrate:(?P<kind>[a-z-]+)(?P<opts>.*)$", re.IGNORECASE)
_TX_CONTROL = {"BEGIN", "COMMIT", "ROLLBACK", "START", "END", "ABORT"}
_IDENT_CHARS = re.compile(r"[A-Za-z0-9_$]")

TEMPLATE = """\
-- Migration: {name}
-- Created: {created} (UTC)
--
-- Write the change under `migrate:up` and its exact reverse under `migrate:down`
-- (`invoke migrate.rollback` runs the down sections). Each migration runs in one
-- transaction with its history row. For statements that cannot run in a transaction
-- (CREATE INDEX CONCURRENTLY), put `-- migrate:no-transaction` on the first line and
-- keep one statement per file.

-- migrate:up


-- migrate:down

"""


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a section, without its terminating semicolon."""

    text: str
    line: int   # 1-based line of the file where the statement starts
    index: int  # 1-based position within its section

    def line_at(self, position: int | None) -> int:
        """File line of the 1-based character ``position`` inside the statement (PostgreSQL's
        error position); the statement's first line when the server gave none."""
        if not position or position < 1:
            return self.line
        return self.line + self.text[: position - 1].count("\n")


@dataclass(frozen=True)
class MigrationFile:
    version: str
    name: str
    path: Path
    checksum: str
    transactional: bool
    up: tuple[Statement, ...]           # empty: not written yet (apply refuses it)
    down: tuple[Statement, ...] | None  # None: no down section (rollback needs the backup)
    up_range: tuple[int, int]           # 1-based first and last line of the up section's body

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def sort_key(self) -> tuple[str, str]:
        """Date-only versions sort as midnight of their day, before timestamps of that day."""
        return (self.version.ljust(14, "0"), self.version)

    @property
    def reversible(self) -> bool:
        return self.down is not None


def normalise(raw: bytes) -> str:
    """File bytes -> text with LF line endings and no BOM (what the checksum covers)."""
    text = raw.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n")


def checksum_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----- statement splitting ---------------------------------------------------------------------

def _skip_space_and_comments(sql: str, i: int) -> int:
    n = len(sql)
    while i < n:
        if sql[i].isspace():
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            i = _end_of_block_comment(sql, i)
        else:
            break
    return i


def _end_of_block_comment(sql: str, i: int) -> int:
    depth, i, n = 0, i, len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def split_statements(sql: str, first_line: int = 1) -> list[Statement]:
    """Split ``sql`` at top-level semicolons; ``first_line`` is the file line of ``sql[0]``."""
    out: list[Statement] = []
    n = len(sql)
    start = _skip_space_and_comments(sql, 0)
    i = start
    words: list[str] = []  # upper-cased top-level words of the current statement (for BEGIN ATOMIC)
    depth = 0

    def finish(end: int) -> None:
        text = sql[start:end].rstrip()
        if text:
            out.append(Statement(text, first_line + sql.count("\n", 0, start), len(out) + 1))

    while i < n:
        ch = sql[i]
        if sql.startswith("--", i) or sql.startswith("/*", i):
            i = _skip_space_and_comments(sql, i)
            continue
        if ch == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _IDENT_CHARS.match(sql[i - 2]))
            i += 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == "'":
                    if i + 1 < n and sql[i + 1] == "'":
                        i += 2
                        continue
                    break
                i += 1
            i += 1
            continue
        if ch == '"':
            i += 1
            while i < n:
                if sql[i] == '"':
                    if i + 1 < n and sql[i + 1] == '"':
                        i += 2
                        continue
                    break
                i += 1
            i += 1
            continue
        if ch == "$" and (i == 0 or not _IDENT_CHARS.match(sql[i - 1])):
            m = _DOLLAR_TAG.match(sql, i)
            if m:
                close = sql.find(m.group(0), m.end())
                i = n if close < 0 else close + len(m.group(0))
                continue
        if ch.isalpha() or ch == "_":
            m = _WORD.match(sql, i)
            assert m is not None
            word = m.group(0).upper()
            words.append(word)
            if _is_routine(words):
                if word in ("BEGIN", "CASE"):
                    depth += 1
                elif word == "END" and depth > 0:
                    depth -= 1
            i = m.end()
            continue
        if ch == ";" and depth == 0:
            finish(i)
            start = _skip_space_and_comments(sql, i + 1)
            i = start
            words = []
            continue
        i += 1
    if start < n:
        finish(n)
    return out


def _is_routine(words: list[str]) -> bool:
    """CREATE [OR REPLACE] FUNCTION|PROCEDURE: the statements whose bodies may hold BEGIN ATOMIC ... END."""
    head = [w for w in words[:4] if w not in ("OR", "REPLACE")]
    return len(head) >= 2 and head[0] == "CREATE" and head[1] in ("FUNCTION", "PROCEDURE")


def leading_words(statement: Statement, count: int = 8) -> list[str]:
    """The first top-level words of a statement, upper-cased (quotes and comments skipped)."""
    words: list[str] = []
    for m in _WORD.finditer(_blank_literals(statement.text)):
        words.append(m.group(0).upper())
        if len(words) >= count:
            break
    return words


def _blank_literals(sql: str) -> str:
    """``sql`` with quoted strings, identifiers and comments replaced by spaces (for keyword scans)."""
    out, i, n = [], 0, len(sql)
    while i < n:
        j = i
        if sql.startswith("--", i) or sql.startswith("/*", i):
            j = _skip_space_and_comments(sql, i)
        elif sql[i] in "'\"":
            q = sql[i]
            j = i + 1
            while j < n and sql[j] != q:
                j += 1
            j += 1
        elif sql[i] == "$" and (i == 0 or not _IDENT_CHARS.match(sql[i - 1])) and _DOLLAR_TAG.match(sql, i):
            m = _DOLLAR_TAG.match(sql, i)
            assert m is not None
            close = sql.find(m.group(0), m.end())
            j = n if close < 0 else close + len(m.group(0))
        if j > i:
            out.append(" ")
            i = j
        else:
            out.append(sql[i])
            i += 1
    return "".join(out)


def _outside_transaction_only(statement: Statement) -> bool:
    words = leading_words(statement, 64)
    if not words:
        return False
    if words[0] == "VACUUM" or words[:2] in (["CREATE", "DATABASE"], ["DROP", "DATABASE"],
                                             ["ALTER", "SYSTEM"], ["CREATE", "TABLESPACE"]):
        return True
    return words[0] in ("CREATE", "DROP", "REINDEX", "ALTER") and "CONCURRENTLY" in words


# ----- parsing ---------------------------------------------------------------------------------

def parse(path: Path) -> MigrationFile:
    """Read and validate one migration file; every problem is one MigrationError naming file and line."""
    m = FILE_RE.match(path.name)
    if not m:
        raise MigrationError(
            f"migration file {path.name} has a bad name: expected YYYYMMDDHHMMSS_name.sql "
            "(or YYYYMMDD_name.sql) with a lowercase name of letters, digits and '_'"
        )
    try:
        text = normalise(path.read_bytes())
    except UnicodeDecodeError as exc:
        raise MigrationError(f"migration file {path.name} is not UTF-8 text ({exc.reason} at byte "
                             f"{exc.start}): save it as UTF-8") from None
    return parse_text(path, text, version=m.group("version"), name=m.group("name"))


def parse_text(path: Path, text: str, *, version: str, name: str) -> MigrationFile:
    lines = text.split("\n")
    transactional = True
    up_at: int | None = None    # 0-based index of the marker line
    down_at: int | None = None
    sql_before: int | None = None
    for idx, line in enumerate(lines):
        mk = _MARKER.match(line.strip())
        if not mk:
            if up_at is None and sql_before is None and line.strip() and not line.strip().startswith("--"):
                sql_before = idx + 1
            continue
        kind, opts = mk.group("kind").lower(), mk.group("opts").strip().lower()
        where = f"{path.name} line {idx + 1}"
        if kind == "no-transaction":
            if up_at is not None:
                raise MigrationError(f"{where}: `-- migrate:no-transaction` must come before `-- migrate:up`")
            transactional = False
        elif kind == "up":
            if up_at is not None:
                raise MigrationError(f"{where}: a second `-- migrate:up` marker: a file has one up section")
            if opts in ("transaction:false",):
                transactional = False
            elif opts not in ("", "transaction:true"):
                raise MigrationError(f"{where}: unknown option {opts!r} on `-- migrate:up` "
                                     "(accepted: transaction:false)")
            up_at = idx
        elif kind == "down":
            if up_at is None:
                raise MigrationError(f"{where}: `-- migrate:down` comes before `-- migrate:up`: "
                                     "write the up section first")
            if down_at is not None:
                raise MigrationError(f"{where}: a second `-- migrate:down` marker: a file has one down section")
            down_at = idx
        else:
            raise MigrationError(f"{where}: unknown directive `-- migrate:{kind}`: accepted are "
                                 "migrate:up, migrate:down, migrate:no-transaction")
    if up_at is None:
        raise MigrationError(f"migration file {path.name} has no `-- migrate:up` marker: "
                             "start the change with a line `-- migrate:up`")
    if sql_before is not None:
        raise MigrationError(
            f"{path.name} line {sql_before}: SQL before the `-- migrate:up` marker: "
            "put the change under `-- migrate:up` and its reverse under `-- migrate:down`"
        )
    up_end = down_at if down_at is not None else len(lines)
    up = split_statements("\n".join(lines[up_at + 1:up_end]), up_at + 2)
    down: tuple[Statement, ...] | None = None
    if down_at is not None:
        down = tuple(split_statements("\n".join(lines[down_at + 1:]), down_at + 2)) or None
    for section, statements in (("up", up), ("down", down or ())):
        for st in statements:
            first = (leading_words(st, 1) or [""])[0]
            if first in _TX_CONTROL:
                raise MigrationError(
                    f"{path.name} line {st.line}: transaction control ({first}) in the {section} section: "
                    "stackops runs each migration in its own transaction (or none with "
                    "`-- migrate:no-transaction`); remove it"
                )
            if transactional and _outside_transaction_only(st):
                raise MigrationError(
                    f"{path.name} line {st.line}: this statement cannot run inside a transaction: put "
                    "`-- migrate:no-transaction` on the file's first line (one such statement per file)"
                )
    return MigrationFile(
        version=version, name=name, path=path, checksum=checksum_of(text), transactional=transactional,
        up=tuple(up), down=down, up_range=(up_at + 2, up_end),
    )


def up_section_text(mf: MigrationFile) -> str:
    """The file's text with every line outside the up section blanked: the linter sees only the up
    section, and its line numbers are the file's."""
    text = normalise(mf.path.read_bytes())
    first, last = mf.up_range
    return "\n".join(line if first <= i <= last else "" for i, line in enumerate(text.split("\n"), 1))


def discover(directory: Path) -> list[MigrationFile]:
    """Every migration in ``directory``, in apply order. Stray ``*.sql`` names and duplicate versions
    are errors (a silently skipped file is a migration that never runs)."""
    if not directory.is_dir():
        raise MigrationError(
            f"migrations folder {directory} does not exist: create a migration with "
            "`invoke migrate.create NAME` or set stackops.migrations.dir"
        )
    entries = sorted(directory.iterdir())
    for p in entries:  # a migration's name with another suffix (".SQL", ".sql ", ".sql.bak"): never run, so refused
        if LOOKS_LIKE.match(p.name) and p.suffix != ".sql" and p.is_file():
            raise MigrationError(
                f"{p.name} in {directory} is named like a migration but does not end in exactly \".sql\", so it "
                "would never run: rename it to VERSION_name.sql, or move it out of the migrations folder"
            )
    found = [parse(p) for p in entries if p.suffix == ".sql" and p.is_file() and not p.name.startswith(".")]
    found.sort(key=lambda f: f.sort_key)
    seen: dict[str, MigrationFile] = {}
    for mf in found:
        if mf.version in seen:
            raise MigrationError(
                f"migrations {seen[mf.version].filename} and {mf.filename} share version {mf.version}: "
                "rename the newer one with `invoke migrate.create` (versions must be unique)"
            )
        seen[mf.version] = mf
    return found


def newest_version(directory: Path) -> str:
    """The newest migration version on disk, padded to 14 digits ("" when there is none): a backup
    whose migration head is newer than this comes from newer code."""
    if not directory.is_dir():
        return ""
    versions = [m["version"].ljust(14, "0") for f in directory.iterdir() if (m := FILE_RE.match(f.name))]
    return max(versions, default="")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise MigrationNameError(
            f"migration name {name!r} is refused: use 1-80 lowercase letters, digits and underscores "
            "(e.g. add_new_feature)"
        )
    return name


def create(directory: Path, name: str, *, now: datetime | None = None) -> Path:
    """Write a new migration from the template; the version is the UTC time, moved on by a second
    while it is taken. The file is written to a temporary name, fsynced and renamed."""
    check_name(name)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).replace(microsecond=0)
    taken = {m.group("version").ljust(14, "0") for p in directory.iterdir()
                             if (m := FILE_RE.match(p.name))}
    while stamp.strftime("%Y%m%d%H%M%S") in taken:
        stamp += timedelta(seconds=1)
    version = stamp.strftime("%Y%m%d%H%M%S")
    path = directory / f"{version}_{name}.sql"
    tmp = directory / f".{path.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(TEMPLATE.format(name=name, created=stamp.strftime("%Y-%m-%d %H:%M:%S")))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the name appeared meanwhile: never overwrite a migration
        except FileExistsError:
            raise MigrationError(f"{path.name} appeared while it was being created: run the command again") from None
        except OSError:  # a filesystem without hard links
            if path.exists():
                raise MigrationError(f"{path.name} already exists: run the command again") from None
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
