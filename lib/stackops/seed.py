"""Sample data for development: the guide's dev environment "includes test users and sample data".

Deterministic: the same ``seed``, ``scale`` and ``anchor`` day give the same rows and the same
upload bytes. Sample rows are recognisable (organisation slugs ``sample-*``, user emails
``@sample.impactbot.test``) and a new run replaces the previous sample data in one transaction.
Upload files are written (temporary name, fsync, rename) under ``<uploads>/sample/seed-S-scale-N/``
before the rows that register them commit; older sample folders are removed after the commit.
Refused in a protected environment (the guide: production has "no test data").
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from stackops import pg
from stackops.config import Settings
from stackops.errors import ProtectedEnvironment, SeedError, UsageError
from stackops.files import atomic_write
from stackops.report import Reporter
from stackops.runtime.base import Runtime

SAMPLE_DOMAIN = "sample.impactbot.test"
SAMPLE_ORG_PREFIX = "sample-"
SAMPLE_UPLOADS = "sample"
REQUIRED_TABLES = ("organizations", "users", "conversations", "messages", "file_uploads", "indicators",
                   "measurements")

INDICATORS = (
    # code, name, unit, theme
    ("GHG.SCOPE1", "Direct greenhouse gas emissions", "tCO2e", "climate"),
    ("GHG.SCOPE2", "Indirect emissions from purchased energy", "tCO2e", "climate"),
    ("ENERGY.RENEWABLE", "Share of renewable energy", "%", "climate"),
    ("WATER.WITHDRAWAL", "Water withdrawn", "m3", "environment"),
    ("WASTE.RECYCLED", "Share of waste recycled", "%", "environment"),
    ("JOBS.CREATED", "Jobs created", "FTE", "social"),
    ("TRAINING.HOURS", "Training hours per employee", "h", "social"),
    ("GENDER.BOARD", "Women on the board", "%", "governance"),
    ("BENEFICIARIES", "People reached", "people", "social"),
    ("LOANS.SME", "Loans to small businesses", "EUR", "finance"),
)
_ORG_WORDS = ("Green", "River", "Solar", "Harbor", "Maple", "Northwind", "Bright", "Common", "Open", "Blue")
_ORG_KINDS = ("Foundation", "Cooperative", "Fund", "Trust", "Partners")
_FIRST = ("Ada", "Ben", "Chloe", "Dev", "Elif", "Femi", "Grace", "Hiro", "Ines", "Jonas", "Kai", "Lena", "Mara",
          "Nils", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tess")
_LAST = ("Adler", "Bauer", "Costa", "Dahl", "Eze", "Fischer", "Garcia", "Haas", "Ito", "Jensen", "Khan", "Lopez")
_ROLES = ("admin", "analyst", "member", "member", "viewer")
_TOPICS = ("emissions report", "water usage", "board diversity", "training programme", "SME lending",
           "renewable share", "recycling rates", "impact summary")
_QUESTIONS = ("How did {t} change last quarter?", "Summarise our {t} for the board.",
              "Which sites drive the {t}?", "Compare {t} with last year.", "What data is missing for {t}?")
_ANSWERS = ("Based on the uploaded figures, {t} moved by {n}% compared with the previous period.",
            "Here is a short summary of {t}: {n} measurements were reported, most of them on time.",
            "The largest contribution to {t} comes from {n} sites; the rest are below average.")


@dataclass(frozen=True)
class SeedResult:
    env: str
    seed: int
    scale: int
    anchor: str
    organizations: int
    users: int
    conversations: int
    messages: int
    uploads: int
    indicators: int
    measurements: int
    uploads_folder: str
    replaced: dict[str, int] = field(default_factory=dict)


@dataclass
class SampleData:
    """Everything one seed run writes, generated before touching the database (pure)."""

    organizations: list[tuple[str, str, datetime]] = field(default_factory=list)  # slug, name, created
    users: list[dict[str, Any]] = field(default_factory=list)
    conversations: list[dict[str, Any]] = field(default_factory=list)  # with "messages"
    uploads: list[dict[str, Any]] = field(default_factory=list)        # with "data" (bytes)
    measurements: list[tuple[str, str, date, date, Decimal, str, datetime]] = field(default_factory=list)
    reference_time: datetime = datetime(2000, 1, 1, tzinfo=UTC)  # created_at of the indicators


def generate(scale: int, seed: int, anchor: datetime, folder: str) -> SampleData:
    """Deterministic sample data for ``scale`` units (2 organisations, 8 users each)."""
    rng = random.Random(f"stackops-seed:{seed}")
    data = SampleData(reference_time=anchor - timedelta(days=500))
    for i in range(1, 2 * scale + 1):
        name = f"{rng.choice(_ORG_WORDS)} {rng.choice(_ORG_KINDS)} {i}"
        data.organizations.append((f"{SAMPLE_ORG_PREFIX}org-{i}", name, anchor - timedelta(days=400 + i)))
    for i in range(1, 8 * scale + 1):
        created = anchor - timedelta(days=rng.randint(30, 380), minutes=rng.randint(0, 1439))
        roll = rng.random()
        last_login = (None if roll < 0.15 else
                      anchor - timedelta(hours=rng.randint(1, 6 * 24)) if roll < 0.65 else
                      created + timedelta(days=rng.randint(0, 20)))
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        data.users.append({
            "email": f"user{i:04d}@{SAMPLE_DOMAIN}",
            "display_name": f"{first} {last}",
            "role": "admin" if i == 1 else rng.choice(_ROLES),
            "org": data.organizations[(i - 1) % len(data.organizations)][0],
            "created_at": created,
            "last_login_at": last_login,
        })
    for u in data.users:
        for _ in range(rng.randint(0, 4)):
            topic = rng.choice(_TOPICS)
            start = u["created_at"] + timedelta(days=rng.randint(0, 25), minutes=rng.randint(0, 600))
            messages = []
            at = start
            for turn in range(rng.randint(1, 4)):
                at += timedelta(seconds=rng.randint(5, 300))
                q = rng.choice(_QUESTIONS).format(t=topic)
                messages.append(("user", q, len(q.split()), at))
                at += timedelta(seconds=rng.randint(2, 40))
                a = rng.choice(_ANSWERS).format(t=topic, n=rng.randint(2, 40) + turn)
                messages.append(("assistant", a, len(a.split()), at))
            data.conversations.append({"email": u["email"], "org": u["org"], "title": topic.capitalize(),
                                       "created_at": start, "updated_at": at, "messages": messages})
    for n, u in enumerate(data.users, 1):
        for k in range(1, rng.randint(0, 2) + 1):
            kind = rng.choice(("csv", "txt", "json"))
            if kind == "csv":
                rows = [f"{c},{rng.randint(1, 999)}" for c, *_ in rng.sample(INDICATORS, 4)]
                payload, ctype = ("indicator,value\n" + "\n".join(rows) + "\n").encode(), "text/csv"
            elif kind == "txt":
                payload = (f"Notes of {u['display_name']}\n" + "\n".join(
                    rng.choice(_QUESTIONS).format(t=rng.choice(_TOPICS)) for _ in range(5)) + "\n").encode()
                ctype = "text/plain"
            else:
                payload = json.dumps({"org": u["org"], "values": [rng.randint(0, 100) for _ in range(8)]},
                                     sort_keys=True).encode()
                ctype = "application/json"
            name = f"{rng.choice(_TOPICS).replace(' ', '_')}_{k}.{kind}"
            data.uploads.append({
                "email": u["email"], "original_name": name, "content_type": ctype, "data": payload,
                "storage_path": f"{folder}/u{n:04d}/{k}-{name}",
                "created_at": u["created_at"] + timedelta(days=rng.randint(0, 25)),
            })
    first_month = date(anchor.year, anchor.month, 1)
    for slug, _name, _created in data.organizations:
        for code, *_ in INDICATORS:
            base = rng.uniform(10, 1000)
            for back in range(12, 0, -1):
                start = _add_months(first_month, -back)
                end = _add_months(start, 1) - timedelta(days=1)
                value = Decimal(f"{base * rng.uniform(0.8, 1.2):.2f}")
                recorded = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=rng.randint(1, 20))
                data.measurements.append((code, slug, start, end, value, "sample data", min(recorded, anchor)))
    return data


def _add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    return date(d.year + y, m + 1, 1)


def _refuse_links(root: Path, rel: str) -> None:
    """Refuse (one line) when any existing component of ``root/rel`` below ``root`` is a symbolic link:
    stackops never writes or deletes through a link in the uploads folder."""
    here = root
    for part in Path(rel).parts:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise SeedError(f"{here} is a symbolic link inside the uploads folder: refusing to write or delete "
                            "through it; remove the link (it may point outside the uploads folder)")


def _write_atomic(root: Path, rel: str, payload: bytes) -> None:
    _refuse_links(root, rel)
    path = root / rel
    for parent in reversed(path.relative_to(root).parents[:-1]):
        try:
            os.mkdir(root / parent, 0o755)
        except FileExistsError:
            pass
        _refuse_links(root, str(parent))  # a link planted meanwhile is still refused
    atomic_write(path, payload, mode=0o644)


def seed_sample_data(settings: Settings, runtime: Runtime, *, scale: int = 1, seed: int = 0,
                     anchor: datetime | None = None, report: Reporter) -> SeedResult:
    """Replace the environment's sample data with the data of ``seed`` at ``scale``."""
    if settings.env.protected:
        raise ProtectedEnvironment(
            f"refusing to load sample data into protected environment {settings.env.name!r}: "
            "production has no test data (the guide); load sample data into dev or test instead"
        )
    if not 1 <= scale <= 10000:
        raise UsageError(f"--scale {scale} is out of range: use 1..10000")
    day = (anchor or datetime.now(UTC)).astimezone(UTC)
    anchor = datetime(day.year, day.month, day.day, tzinfo=UTC)
    folder = f"{SAMPLE_UPLOADS}/seed-{seed}-scale-{scale}"
    data = generate(scale, seed, anchor, folder)
    conn = pg.connect(runtime)
    uploads_root = settings.env.uploads_dir
    with conn:
        missing = [r[0] for r in conn.execute("SELECT t FROM unnest(%s::text[]) t WHERE to_regclass(t) IS NULL",
                                              (list(REQUIRED_TABLES),)).fetchall()]
        conn.rollback()
        if missing:
            raise SeedError(f"database {settings.env.db_name} has no table {missing[0]}: apply the schema first "
                            "with `invoke migrate.apply`")
        report.step(f"writing {len(data.uploads)} sample upload file(s) to {uploads_root / folder}")
        _refuse_links(uploads_root, folder)
        uploads_root.mkdir(parents=True, exist_ok=True)
        for up in data.uploads:
            _write_atomic(uploads_root, up["storage_path"], up["data"])
        report.step(f"loading sample data (seed {seed}, scale {scale}) into {settings.env.db_name}")
        with conn.transaction():
            replaced = _delete_previous(conn)
            counts = _insert(conn, data)
    _prune_sample_folders(uploads_root, keep=folder)
    report.info(", ".join(f"{v} {k}" for k, v in counts.items()))
    return SeedResult(env=settings.env.name, seed=seed, scale=scale, anchor=anchor.date().isoformat(),
                      uploads_folder=str(uploads_root / folder), replaced=replaced, **counts)


def _prune_sample_folders(root: Path, keep: str) -> None:
    """Remove older sample folders; links are removed as links, never followed."""
    _refuse_links(root, SAMPLE_UPLOADS)
    base = root / SAMPLE_UPLOADS
    if base.is_dir():
        for child in base.iterdir():
            if child.name != Path(keep).name:
                if stat.S_ISDIR(os.lstat(child).st_mode):
                    shutil.rmtree(child)  # fd-based: never follows a link inside
                else:
                    child.unlink()


def _delete_previous(conn: Any) -> dict[str, int]:
    pattern = f"%@{SAMPLE_DOMAIN}"
    out = {
        "uploads": conn.execute("DELETE FROM file_uploads WHERE owner_id IN "
                                "(SELECT id FROM users WHERE email LIKE %s)", (pattern,)).rowcount,
        "users": conn.execute("DELETE FROM users WHERE email LIKE %s", (pattern,)).rowcount,
        "organizations": conn.execute("DELETE FROM organizations WHERE slug LIKE %s",
                                      (SAMPLE_ORG_PREFIX + "%",)).rowcount,
    }
    return {k: v for k, v in out.items() if v}


def _returned(cur: Any) -> int:
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _insert(conn: Any, data: SampleData) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO indicators (code, name, unit, theme, created_at) VALUES (%s, %s, %s, %s, %s) "
                        "ON CONFLICT (code) DO NOTHING", [(*i, data.reference_time) for i in INDICATORS])
        cur.execute("SELECT code, id FROM indicators WHERE code = ANY(%s)", ([c for c, *_ in INDICATORS],))
        indicator_ids = dict(cur.fetchall())
        org_ids: dict[str, int] = {}
        for slug, name, created in data.organizations:
            cur.execute("INSERT INTO organizations (slug, name, created_at) VALUES (%s, %s, %s) RETURNING id",
                        (slug, name, created))
            org_ids[slug] = _returned(cur)
        user_ids: dict[str, int] = {}
        for u in data.users:
            cur.execute(
                "INSERT INTO users (organization_id, email, display_name, role, created_at, last_login_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (org_ids[u["org"]], u["email"], u["display_name"], u["role"], u["created_at"], u["last_login_at"]))
            user_ids[u["email"]] = _returned(cur)
        conv_ids: list[int] = []
        for c in data.conversations:
            cur.execute("INSERT INTO conversations (user_id, organization_id, title, created_at, updated_at) "
                        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                        (user_ids[c["email"]], org_ids[c["org"]], c["title"], c["created_at"], c["updated_at"]))
            conv_ids.append(_returned(cur))
        messages = 0
        with cur.copy("COPY messages (conversation_id, role, content, token_count, created_at) FROM STDIN") as cp:
            for cid, c in zip(conv_ids, data.conversations, strict=True):
                for role, content, tokens, at in c["messages"]:
                    cp.write_row((cid, role, content, tokens, at))
                    messages += 1
        cur.executemany(
            "INSERT INTO file_uploads (owner_id, original_name, storage_path, content_type, size_bytes, sha256, "
            "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(user_ids[u["email"]], u["original_name"], u["storage_path"], u["content_type"], len(u["data"]),
              hashlib.sha256(u["data"]).hexdigest(), u["created_at"]) for u in data.uploads])
        with cur.copy("COPY measurements (indicator_id, organization_id, period_start, period_end, value, source, "
                      "recorded_at) FROM STDIN") as cp:
            for code, slug, start, end, value, source, recorded in data.measurements:
                cp.write_row((indicator_ids[code], org_ids[slug], start, end, value, source, recorded))
    return {"organizations": len(data.organizations), "users": len(data.users),
            "conversations": len(data.conversations), "messages": messages, "uploads": len(data.uploads),
            "indicators": len(INDICATORS), "measurements": len(data.measurements)}
