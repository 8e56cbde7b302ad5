"""The migration file format: parsing, statement splitting, line mapping, ordering, create, status."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stackops.migrate import MigrationError, MigrationNameError
from stackops.migrate.files import (
    checksum_of,
    create,
    discover,
    normalise,
    parse,
    split_statements,
    up_section_text,
)
from stackops.migrate.history import HistoryRow, compute_status

ROOT = Path(__file__).resolve().parents[2]


def write(folder: Path, name: str, text: str, crlf: bool = False) -> Path:
    path = folder / name
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes(data.encode())
    return path


def texts(sql: str) -> list[str]:
    return [s.text for s in split_statements(sql)]


# ----- statement splitting ---------------------------------------------------------------------

def test_split_respects_quotes_comments_and_dollar_bodies() -> None:
    sql = """
    INSERT INTO t VALUES ('a;b', 'it''s; fine');  -- trailing; comment
    /* block; /* nested; */ still comment; */ SELECT "we;ird" FROM x;
    CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END; $body$;
    SELECT E'back\\'slash;', $$dollar;$$
    """
    assert texts(sql) == [
        "INSERT INTO t VALUES ('a;b', 'it''s; fine')",
        'SELECT "we;ird" FROM x',
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END; $body$",
        "SELECT E'back\\'slash;', $$dollar;$$",
    ]


def test_split_keeps_sql_standard_function_bodies_whole() -> None:
    sql = ("CREATE FUNCTION g(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC "
           "SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END; SELECT 2; END;\nSELECT 3;")
    out = texts(sql)
    assert len(out) == 2 and out[0].endswith("SELECT 2; END") and out[1] == "SELECT 3"


def test_positional_parameters_are_not_dollar_quotes() -> None:
    assert texts("PREPARE p AS SELECT $1; SELECT 2;") == ["PREPARE p AS SELECT $1", "SELECT 2"]


def test_statement_lines_and_error_positions_map_to_file_lines() -> None:
    sql = "-- header\n\nSELECT 1;\n  -- note\nSELECT\n  2,\n  nope;\nSELECT 3"
    stmts = split_statements(sql, first_line=10)
    assert [(s.line, s.index) for s in stmts] == [(12, 1), (14, 2), (17, 3)]
    second = stmts[1]
    assert second.line_at(second.text.index("nope") + 1) == 16
    assert second.line_at(None) == 14


@given(st.lists(st.text(alphabet="abc ;'\n$", max_size=12), min_size=1, max_size=6))
def test_split_round_trips_quoted_literals(values: list[str]) -> None:
    quoted = ["SELECT '" + v.replace("'", "''") + "'" for v in values]
    assert texts(";\n".join(quoted) + ";") == quoted


# ----- parsing ---------------------------------------------------------------------------------

def test_parse_sections_header_and_checksum_normalised(tmp_path: Path) -> None:
    body = ("-- migrate:no-transaction\n-- migrate:up\nCREATE INDEX CONCURRENTLY i ON t (a);\n"
            "-- migrate:down\nDROP INDEX CONCURRENTLY i;\n")
    lf = parse(write(tmp_path, "20240618120000_idx.sql", body))
    (tmp_path / "crlf").mkdir()
    crlf = parse(write(tmp_path / "crlf", "20240618120000_idx.sql", body, crlf=True))
    assert not lf.transactional and lf.version == "20240618120000" and lf.name == "idx"
    assert [s.line for s in lf.up] == [3] and lf.down is not None and lf.down[0].line == 5
    assert lf.checksum == crlf.checksum == checksum_of(body)
    assert normalise(b"\xef\xbb\xbfa\r\nb") == "a\nb"


def test_dbmate_transaction_option_and_missing_down(tmp_path: Path) -> None:
    mf = parse(write(tmp_path, "20240618_x.sql", "-- migrate:up transaction:false\nVACUUM t;\n"))
    assert not mf.transactional and mf.down is None and not mf.reversible


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("2024_x.sql", "-- migrate:up\nSELECT 1;", "bad name"),
    ("20240618_Bad.sql", "-- migrate:up\nSELECT 1;", "bad name"),
    ("20240618_x.sql", "SELECT 1;\n-- migrate:up\nSELECT 2;", "line 1: SQL before"),
    ("20240618_x.sql", "-- migrate:down\nSELECT 1;", "line 1: `-- migrate:down` comes before"),
    ("20240618_x.sql", "CREATE TABLE t ();", "no `-- migrate:up` marker"),
    ("20240618_x.sql", "-- migrate:up\nSELECT 1;\n-- migrate:donw\n", "line 3: unknown directive"),
    ("20240618_x.sql", "-- migrate:up\nSELECT 1;\n-- migrate:up\n", "line 3: a second"),
    ("20240618_x.sql", "-- migrate:up\nSELECT 1;\nCOMMIT;\n", "line 3: transaction control (COMMIT)"),
    ("20240618_x.sql", "-- migrate:up\n\nCREATE INDEX CONCURRENTLY i ON t (a);", "line 3: this statement cannot run"),
])
def test_bad_files_are_refused_with_file_and_line(tmp_path: Path, name: str, text: str, needle: str) -> None:
    with pytest.raises(MigrationError) as err:
        parse(write(tmp_path, name, text))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_up_section_text_blanks_everything_else_keeping_line_numbers(tmp_path: Path) -> None:
    mf = parse(write(tmp_path, "20240618_x.sql", "-- c\n-- migrate:up\nSELECT 1;\n-- migrate:down\nDROP TABLE t;\n"))
    assert up_section_text(mf).split("\n") == ["", "", "SELECT 1;", "", "", ""]


# ----- discovery and ordering ------------------------------------------------------------------

def test_discover_orders_date_only_before_timestamps_of_that_day(tmp_path: Path) -> None:
    for name in ("20240619000001_c.sql", "20240618_a.sql", "20240618000100_b.sql"):
        write(tmp_path, name, "-- migrate:up\nSELECT 1;\n")
    (tmp_path / "README.md").write_text("not a migration")
    assert [m.filename for m in discover(tmp_path)] == [
        "20240618_a.sql", "20240618000100_b.sql", "20240619000001_c.sql"]


def test_discover_refuses_duplicate_versions_and_stray_sql(tmp_path: Path) -> None:
    write(tmp_path, "20240618_a.sql", "-- migrate:up\nSELECT 1;\n")
    write(tmp_path, "20240618_b.sql", "-- migrate:up\nSELECT 1;\n")
    with pytest.raises(MigrationError, match="share version 20240618"):
        discover(tmp_path)
    (tmp_path / "20240618_b.sql").unlink()
    write(tmp_path, "add_feature.sql", "-- migrate:up\nSELECT 1;\n")
    with pytest.raises(MigrationError, match=r"add_feature\.sql has a bad name"):
        discover(tmp_path)


@pytest.mark.parametrize("name", ["20261130180000_upper.SQL", "20261130180000_space.sql ", "20261130_b.sql.bak"])
def test_discover_refuses_a_migration_name_with_another_suffix_instead_of_skipping_it(tmp_path: Path,
                                                                                   name: str) -> None:
    """Before, "*.SQL" or "*.sql " was skipped: status, check and predeploy said nothing was pending."""
    write(tmp_path, "20240618_a.sql", "-- migrate:up\nSELECT 1;\n")
    write(tmp_path, name, "-- migrate:up\nSELECT 1;\n")
    with pytest.raises(MigrationError, match="named like a migration but does not end in exactly"):
        discover(tmp_path)


def test_project_schema_has_several_ordered_reversible_migrations() -> None:
    files = discover(ROOT / "migrations")
    assert len(files) >= 4
    assert all(f.reversible and f.up for f in files)
    assert any(not f.transactional for f in files)  # the CONCURRENTLY index runs outside a transaction


# ----- lint (squawk, no database) -------------------------------------------------------------

def test_lint_flags_a_required_column_at_its_file_line_and_skips_down_sections(tmp_path: Path) -> None:
    from stackops.migrate.lint import lint

    risky = parse(write(tmp_path, "20240618000001_risky.sql",
                        "-- migrate:up\n-- note\nALTER TABLE users ADD COLUMN x text NOT NULL;\n"
                        "-- migrate:down\nALTER TABLE users DROP COLUMN x;\nDROP TABLE users;\n"))
    fine = parse(write(tmp_path, "20240618000002_fine.sql",
                       "-- migrate:up\nCREATE TABLE t (id bigint PRIMARY KEY, at timestamptz);\n"
                       "CREATE INDEX t_at_idx ON t (at);\n-- migrate:down\nDROP TABLE t;\n"))
    findings = lint([risky, fine], cwd=tmp_path, pg_version="15.0")
    assert [(f.filename, f.line, f.rule) for f in findings] == [
        ("20240618000001_risky.sql", 3, "adding-required-field")]


# ----- create ----------------------------------------------------------------------------------

def test_create_writes_a_parsable_template_and_bumps_taken_versions(tmp_path: Path) -> None:
    now = datetime(2024, 6, 18, 9, 30, 0, tzinfo=UTC)
    first = create(tmp_path / "m", "add_new_feature", now=now)
    second = create(tmp_path / "m", "add_new_feature", now=now)
    assert first.name == "20240618093000_add_new_feature.sql"
    assert second.name == "20240618093001_add_new_feature.sql"
    mf = parse(first)
    assert mf.transactional and mf.up == () and mf.down is None
    assert not list((tmp_path / "m").glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("name", ["Bad Name", "add-feature", "", "x" * 81, "ünïcode", "../escape"])
def test_create_refuses_names_outside_lowercase_digits_underscore(tmp_path: Path, name: str) -> None:
    with pytest.raises(MigrationNameError, match="is refused"):
        create(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


# ----- status ----------------------------------------------------------------------------------

def _row(version: str, name: str, checksum: str, status: str = "applied", batch: int = 1) -> HistoryRow:
    return HistoryRow(version, name, checksum, True, status, datetime(2024, 6, 18, tzinfo=UTC), "me@host",
                      5, batch, int(version[-2:]), "b1", None)


def test_compute_status_classifies_every_file_and_row(tmp_path: Path) -> None:
    for v in ("01", "02", "03", "04"):
        write(tmp_path, f"202406180000{v}_m{v}.sql", f"-- migrate:up\nSELECT {v};\n")
    files = discover(tmp_path)
    history = [
        _row("20240618000001", "m01", files[0].checksum),
        _row("20240618000002", "m02", "0" * 64),
        _row("20240618000004", "m04", files[3].checksum, status="failed", batch=2),
        _row("20240618000009", "gone", "1" * 64, batch=2),
    ]
    states = {e.version[-2:]: e.state for e in compute_status(files, history).entries}
    assert states == {"01": "applied", "02": "drifted", "03": "pending", "04": "failed", "09": "missing"}
    pending = compute_status(files, history).having("pending")[0]
    assert "out of order" in pending.detail
