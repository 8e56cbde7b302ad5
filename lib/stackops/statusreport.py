"""`invoke report`: one self-contained HTML status page per environment, written under its backups folder.

Sections: backups over time (size, duration, kind, verified or not), time since the last verified
backup against the policy, retention (what the next prune keeps and drops), table sizes and growth,
migration history. Plots are inline SVG drawn by matplotlib's SVG backend (no pyplot, no display, no
network, no CDN): the page opens anywhere, offline, as one file. What cannot be read (the database
down) is said in its section instead of failing the whole page.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackops import backupset, pg
from stackops.config import Settings
from stackops.errors import StackopsError
from stackops.files import atomic_write
from stackops.report import human_bytes
from stackops.runtime.base import Runtime

REPORT_NAME = "report.html"
POLICY_HOURS = 26.0  # the newest verified backup must be younger (the deployment check's limit too)
SECTIONS = ("backups", "last-verified", "retention", "tables", "migrations")
PLOTS = ("backups-size", "backups-duration", "last-verified-age", "table-sizes", "migrations-timeline")
KIND_COLOURS = {"full": "#1f77b4", "db": "#2ca02c", "pre_migration": "#ff7f0e"}


@dataclass
class StatusData:
    env: str
    database: str
    generated_at: datetime
    backups: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[dict[str, str]] = field(default_factory=list)
    newest_verified: dict[str, Any] | None = None
    retention: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    tables_note: str = ""
    growth_since: str | None = None
    migrations: list[dict[str, Any]] = field(default_factory=list)
    migrations_note: str = ""


def gather(settings: Settings, runtime: Runtime, now: datetime | None = None) -> StatusData:
    """Every figure of the page, read once (the database part is optional: a note when it is down)."""
    from stackops import monitor, retention
    from stackops.migrate.history import read_history

    moment = now or datetime.now(UTC)
    data = StatusData(settings.env.name, settings.env.db_name, moment)
    sets, damaged = backupset.scan(settings)
    for b in sorted(sets, key=lambda x: x.started_at):
        v = b.verification
        data.backups.append({"id": b.id, "kind": b.kind, "started_at": b.started_at, "size": b.size,
                             "duration_s": float(b.manifest.get("duration_s") or 0.0),
                             "verified": None if not v else bool(v.get("ok")),
                             "verified_at": None if not v else str(v.get("verified_at", ""))})
    data.damaged = [{"id": d.id, "reason": d.reason} for d in damaged]
    newest = backupset.newest_verified(settings.env.backups_dir, moment)
    if newest is not None:
        data.newest_verified = {"id": newest.id, "age_h": (moment - newest.started_at).total_seconds() / 3600}
    decisions = retention.decide(settings, moment)
    if settings.offsite.enabled:  # the same only-copy rule as `backup.prune`: a set never pushed is kept
        from stackops.offsite import copies

        decisions, _, _ = retention.guarded(decisions, copies(settings), include_unpushed=False)
    data.retention = [{"id": d.backup.id, "kind": d.backup.kind, "keep": d.keep, "covers": "+".join(d.covers),
                       "reasons": "; ".join(d.reasons)} for d in decisions]
    try:
        t = monitor.tables(settings, runtime)
        data.tables = [{"table": f"{x.schema}.{x.table}", "bytes": x.total_bytes, "rows": x.rows_estimate,
                        "growth": x.growth_rows} for x in t.tables]
        data.growth_since = t.backup_id
        with pg.connect(runtime) as conn:
            data.migrations = [{"version": r.version, "name": r.name, "status": r.status, "applied_at": r.applied_at,
                                "execution_ms": r.execution_ms, "batch": r.batch, "backup_id": r.backup_id}
                               for r in read_history(conn)]
        if not data.migrations:
            data.migrations_note = "no migration applied yet (no schema_migrations rows)"
    except (StackopsError, pg.Error) as exc:
        why = f"the database could not be read: {pg.first_line(exc)}"
        data.tables_note = data.migrations_note = why
    return data


# ----- plots -----------------------------------------------------------------------------------------
def _svg(fig: Any, plot_id: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML declaration and doctype: inline in HTML
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)  # creator and date: noise
    return re.sub(r"^<svg ", f'<svg id="{plot_id}" role="img" aria-label="{plot_id}" ', text, count=1)


def _figure(width: float = 7.5, height: float = 2.8) -> Any:
    from matplotlib.figure import Figure  # lazy: about 300 ms, and only this task needs it

    return Figure(figsize=(width, height), dpi=96, layout="constrained")


def _dates(ax: Any) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(minticks=3, maxticks=8)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax.tick_params(axis="x", labelsize=8)


def _no_data(fig: Any, text: str) -> None:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#666")
    ax.set_axis_off()


def plot_backups(data: StatusData) -> tuple[str, str]:
    """(size over time, duration over time): colour = kind; filled = verified ok, red edge = failed,
    hollow = never verified."""
    size_fig, dur_fig = _figure(), _figure()
    if not data.backups:
        _no_data(size_fig, "no backups yet")
        _no_data(dur_fig, "no backups yet")
    else:
        ax_s, ax_d = size_fig.add_subplot(), dur_fig.add_subplot()
        for kind in sorted({b["kind"] for b in data.backups}):
            rows = [b for b in data.backups if b["kind"] == kind]
            colour = KIND_COLOURS.get(kind, "#7f7f7f")
            for ax, key, scale in ((ax_s, "size", 1 / 2**20), (ax_d, "duration_s", 1.0)):
                xs = [b["started_at"] for b in rows]
                ys = [b[key] * scale for b in rows]
                faces = [colour if b["verified"] else "white" for b in rows]
                edges = ["#d62728" if b["verified"] is False else colour for b in rows]
                ax.scatter(xs, ys, s=46, c=faces, edgecolors=edges, linewidths=1.6, label=kind, zorder=3)
        ax_s.set_ylabel("size (MiB)")
        ax_d.set_ylabel("duration (s)")
        for ax, title in ((ax_s, "backup size over time"), (ax_d, "backup duration over time")):
            ax.set_title(title + " (filled: verified ok; hollow: not verified; red edge: failed)", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8, loc="upper left")
            _dates(ax)
    return _svg(size_fig, "backups-size"), _svg(dur_fig, "backups-duration")


def plot_last_verified(data: StatusData) -> str:
    fig = _figure(height=1.6)
    ax = fig.add_subplot()
    age = data.newest_verified["age_h"] if data.newest_verified else None
    if age is None:
        ax.barh([0], [POLICY_HOURS], color="#eeeeee", edgecolor="#d62728", hatch="//")
        ax.text(POLICY_HOURS / 2, 0, "no verified backup", ha="center", va="center", color="#d62728")
    else:
        ax.barh([0], [age], color="#2ca02c" if age <= POLICY_HOURS else "#d62728")
        ax.text(age, 0, f" {age:.1f} h", va="center", fontsize=9)
    ax.axvline(POLICY_HOURS, color="#333", linestyle="--")
    ax.text(POLICY_HOURS, 0.45, f"policy {POLICY_HOURS:g} h", ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlabel("hours since the newest verified backup")
    ax.set_xlim(0, max(POLICY_HOURS, age or 0) * 1.25)
    return _svg(fig, "last-verified-age")


def plot_tables(data: StatusData) -> str:
    rows = data.tables[:15]
    fig = _figure(height=max(1.8, 0.32 * len(rows) + 0.9))
    if not rows:
        _no_data(fig, data.tables_note or "no user tables")
        return _svg(fig, "table-sizes")
    ax = fig.add_subplot()
    names = [r["table"] for r in rows][::-1]
    sizes = [r["bytes"] / 2**20 for r in rows][::-1]
    bars = ax.barh(names, sizes, color="#1f77b4")
    for bar, r in zip(bars, rows[::-1], strict=True):
        growth = "" if r["growth"] is None else f"  {r['growth']:+d} rows"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {human_bytes(r['bytes'])}{growth}",
                va="center", fontsize=8)
    ax.set_xlabel("total size with indexes and TOAST (MiB)")
    ax.set_xlim(0, max(sizes) * 1.45 or 1)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("largest tables (growth in rows since backup " + (data.growth_since or "-") + ")", fontsize=9)
    return _svg(fig, "table-sizes")


def plot_migrations(data: StatusData) -> str:
    fig = _figure(height=2.2)
    if not data.migrations:
        _no_data(fig, data.migrations_note or "no migrations")
        return _svg(fig, "migrations-timeline")
    ax = fig.add_subplot()
    xs = [m["applied_at"] for m in data.migrations]
    ys = list(range(1, len(xs) + 1))
    colours = ["#2ca02c" if m["status"] == "applied" else "#d62728" for m in data.migrations]
    ax.step(xs, ys, where="post", color="#999")
    ax.scatter(xs, ys, c=colours, zorder=3)
    ax.set_ylabel("migrations applied")
    ax.set_title("migration history (red: failed or running)", fontsize=9)
    ax.grid(True, alpha=0.3)
    _dates(ax)
    return _svg(fig, "migrations-timeline")


# ----- page --------------------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e('' if v is None else str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:24px auto;max-width:1000px;color:#222}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.ok{color:#2ca02c;font-weight:600}
.bad{color:#d62728;font-weight:600}.note{color:#666;font-size:13px}svg{max-width:100%;height:auto}
"""


def render(data: StatusData) -> str:
    """The whole page as one HTML string (styles and SVG inline)."""
    from matplotlib import rc_context

    e = html.escape
    with rc_context({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "stackops"}):
        size_svg, duration_svg = plot_backups(data)
        verified_svg = plot_last_verified(data)
        tables_svg = plot_tables(data)
        migrations_svg = plot_migrations(data)
    n_ok = sum(1 for b in data.backups if b["verified"])
    backups_rows = [[b["id"], b["kind"], b["started_at"].strftime("%Y-%m-%d %H:%M"), human_bytes(b["size"]),
                     f"{b['duration_s']:.1f}s",
                     {True: "ok", False: "FAILED", None: "never"}[b["verified"]]] for b in reversed(data.backups)]
    backups_rows += [[d["id"], "DAMAGED", "-", "-", "-", d["reason"]] for d in data.damaged]
    nv = data.newest_verified
    if nv is None:
        verdict = '<p class="bad">No verified backup: run <code>invoke backup.verify --latest</code>.</p>'
    elif nv["age_h"] <= POLICY_HOURS:
        verdict = (f'<p class="ok">{nv["age_h"]:.1f} h since the newest verified backup {e(nv["id"])} '
                   f"(policy: at most {POLICY_HOURS:g} h).</p>")
    else:
        verdict = (f'<p class="bad">{nv["age_h"]:.1f} h since the newest verified backup {e(nv["id"])}: '
                   f"older than the policy's {POLICY_HOURS:g} h.</p>")
    keep = sum(1 for r in data.retention if r["keep"])
    drop = len(data.retention) - keep
    sections = {
        "backups": ("Backups over time",
                    f"<p>{len(data.backups)} complete backup(s), {n_ok} verified ok, {len(data.damaged)} damaged.</p>"
                    + size_svg + duration_svg
                    + _table(["backup", "kind", "started (UTC)", "size", "took", "verified"], backups_rows)),
        "last-verified": ("Time since the last verified backup", verdict + verified_svg),
        "retention": ("Retention: what the next prune keeps and drops",
                      f"<p>The next <code>invoke backup.prune</code> keeps {keep} and deletes {drop}.</p>"
                      + _table(["backup", "kind", "covers", "decision", "reasons"],
                               [[r["id"], r["kind"], r["covers"], "keep" if r["keep"] else "DELETE", r["reasons"]]
                                for r in data.retention])),
        "tables": ("Table sizes and growth",
                   (f'<p class="note">{e(data.tables_note)}</p>' if data.tables_note else "") + tables_svg
                   + _table(["table", "size", "rows (est.)", "growth since backup"],
                            [[t["table"], human_bytes(t["bytes"]), t["rows"],
                              "-" if t["growth"] is None else f"{t['growth']:+d}"] for t in data.tables])),
        "migrations": ("Migration history",
                       (f'<p class="note">{e(data.migrations_note)}</p>' if data.migrations_note else "")
                       + migrations_svg
                       + _table(["version", "name", "status", "applied (UTC)", "took", "batch", "backup before"],
                                [[m["version"], m["name"], m["status"], m["applied_at"].strftime("%Y-%m-%d %H:%M"),
                                  "-" if m["execution_ms"] is None else f"{m['execution_ms']} ms", m["batch"],
                                  m["backup_id"] or "-"] for m in data.migrations])),
    }
    body = "".join(f'<section id="{sid}"><h2>{e(title)}</h2>{content}</section>'
                   for sid, (title, content) in sections.items())
    when = data.generated_at.strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>stackops status: {e(data.env)}'
            f"</title><style>{CSS}</style></head><body><h1>ImpactBot v2 data status: {e(data.env)} "
            f"({e(data.database)})</h1><p class=\"note\">Generated {when} by <code>invoke report --env "
            f"{e(data.env)}</code>; self-contained, no network.</p>{body}</body></html>\n")


def write_report(settings: Settings, runtime: Runtime, now: datetime | None = None) -> Path:
    """Gather, render and write ``<backups folder>/report.html`` atomically (0644: it holds no secret)."""
    page = render(gather(settings, runtime, now))
    folder = settings.env.backups_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_NAME
    atomic_write(path, page.encode(), mode=0o644)
    return path
