"""Deterministic ImpactBot-like data for benchmarks, into the real schema (migrations applied).

``generate(conn, uploads_dir, scale, seed)`` fills an empty, migrated ImpactBot v2 database and
writes upload files; scale 1 is about 1 GB of database (2 M chat messages, ~1 M measurements) and
500 MB of uploads. Everything comes from one ``random.Random`` seeded with ``seed`` and a fixed
anchor day, so the same (scale, seed) gives the same rows and the same bytes on every machine.

- chat messages: questions and answers of varied length (a few words to a few paragraphs) drawn
  from a Zipf-weighted vocabulary of real words and word-like syllable compounds, with commas,
  full stops and paragraph breaks, so they compress like prose (about 3x), not like hex or filler;
- measurements: monthly numeric series per organisation and indicator (trend, seasonality, noise);
- users: creation and last-login times (some never logged in), roles, organisations;
- uploads: mixed sizes (1 KB .. 8 MB, log-uniform) and types, mostly already-compressed binaries
  (jpeg, png, pdf, zip, docx) and some text (csv, txt, json), each registered in ``file_uploads``
  with its size and sha256.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
MESSAGES_PER_SCALE = 2_000_000
UPLOAD_BYTES_PER_SCALE = 500 * 2**20
UPLOADS_FOLDER = "bench"

COMMON = ("the of and to in a is that for it as with was on be by this are we our from at or an have not "
          "which can more will their has but all also they were been its these than into per other each "
          "how what when where who would should could may about over between after during across within").split()
DOMAIN = ("impact measurement indicator outcome beneficiaries baseline target survey households school water "
          "sanitation health income livelihood training women youth community report quarter region district "
          "partner programme evidence theory change output activity budget data quality emissions energy "
          "renewable share recycling waste board diversity lending loans enterprises jobs created hours employee "
          "scope direct indirect purchased electricity heating tonnes reporting period year month previous "
          "increase decrease trend average median total figures sites portfolio investment fund grant "
          "cooperative foundation trust stakeholders methodology verification assurance framework standard "
          "alignment goals sustainable development climate environment social governance risk mitigation "
          "adaptation resilience inclusion access services rural urban farmers smallholders yield harvest "
          "clinic patients teachers students enrolment attendance completion graduates skills placement").split()
TEXT_TYPES = (("csv", "text/csv"), ("txt", "text/plain"), ("json", "application/json"))
BINARY_TYPES = (("jpg", "image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"), ("png", "image/png", b"\x89PNG\r\n\x1a\n"),
                ("pdf", "application/pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"), ("zip", "application/zip", b"PK\x03\x04"),
                ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", b"PK\x03\x04"))


def _vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """~4,000 words with Zipf weights: common words first, then domain words, then syllable compounds."""
    s1 = "ka lo mi ne su ta ri po de an el or us ba ve zi gra pre con dis".split()
    s2 = "ra ti mo en al is on ur ed ly ment tion".split()
    s3 = "n s t r l x m d ng ck th ve ss ge ry ia um".split()
    made = [a + b + c for a, b, c in itertools.product(s1, s2, s3)]
    rng.shuffle(made)
    domain = list(DOMAIN)
    rng.shuffle(domain)
    words = list(COMMON) + domain + made
    weights = [1.0 / (rank + 2) ** 1.05 for rank in range(len(words))]
    cum = list(itertools.accumulate(weights))
    return words, cum


class Prose:
    """Text of a given number of words: sentences of 6..24 words, paragraphs of 2..6 sentences."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words, self.cum = _vocabulary(rng)

    def text(self, n: int, newline: str = "\\n") -> str:
        rng = self.rng
        drawn = rng.choices(self.words, cum_weights=self.cum, k=n)
        out: list[str] = []
        i = 0
        sentences = 0
        while i < n:
            k = min(n - i, rng.randint(6, 24))
            s = drawn[i:i + k]
            s[0] = s[0].capitalize()
            if k > 9 and rng.random() < 0.4:
                j = rng.randint(3, k - 3)
                s[j] += ","
            if rng.random() < 0.12:
                s.insert(rng.randint(1, len(s)), f"{rng.randint(2, 980)}{rng.choice(('%', '', ' tCO2e', ' people'))}")
            out.append(" ".join(s) + rng.choice(".....?"))
            i += k
            sentences += 1
            if i < n and sentences % rng.randint(2, 6) == 0:
                out.append(newline * 2)
            else:
                out.append(" ")
        return "".join(out).strip()


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S+00")


def _copy(conn: Any, table: str, columns: str, lines: Any) -> None:
    """COPY text-format lines (already escaped) in 1 MB blocks."""
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as cp:
        buf = io.StringIO()
        for line in lines:
            buf.write(line)
            if buf.tell() > 2**20:
                cp.write(buf.getvalue())
                buf = io.StringIO()
        cp.write(buf.getvalue())


def generate(conn: Any, uploads_dir: Path, scale: float = 1.0, seed: int = 0) -> dict[str, int]:
    """Fill the empty migrated database behind ``conn`` and write uploads under ``uploads_dir``;
    returns row counts per table. Refuses a database that already holds users."""
    row = conn.execute("SELECT count(*) FROM users").fetchone()
    if row[0]:
        raise RuntimeError("the benchmark generator fills an empty migrated database; this one has users")
    rng = random.Random(f"stackops-bench:{seed}")
    prose = Prose(rng)
    n_msgs = max(200, int(MESSAGES_PER_SCALE * scale))
    n_orgs = max(2, int(200 * scale))
    n_users = max(10, int(20_000 * scale))
    counts: dict[str, int] = {}

    _copy(conn, "organizations", "slug, name, created_at",
          (f"org-{i}\t{prose.words[200 + i % 500].capitalize()} {rng.choice(('Fund', 'Trust', 'Foundation'))} {i}"
           f"\t{_ts(ANCHOR - timedelta(days=2000 - i % 1500))}\n" for i in range(1, n_orgs + 1)))
    counts["organizations"] = n_orgs

    created: list[datetime] = []
    lines = []
    roles = ("admin", "analyst", "member", "member", "member", "viewer")
    for i in range(1, n_users + 1):
        c = ANCHOR - timedelta(days=rng.randint(10, 1800), seconds=rng.randint(0, 86399))
        created.append(c)
        r = rng.random()
        login = ("\\N" if r < 0.12 else
                 _ts(min(ANCHOR, c + timedelta(seconds=int(rng.expovariate(1 / 86400) * 30)))) if r < 0.4 else
                 _ts(ANCHOR - timedelta(seconds=int(rng.expovariate(1 / 3600) * 40))))
        if login != "\\N" and login < _ts(c):
            login = _ts(c)
        first, last = prose.words[rng.randrange(60, 400)], prose.words[rng.randrange(400, 3000)]
        name = f"{first.capitalize()} {last.capitalize()}"
        lines.append(f"{1 + i % n_orgs}\tuser{i}@example.org\t{name}\t{rng.choice(roles)}\t"
                     f"{hashlib.sha256(f'{seed}:{i}'.encode()).hexdigest()}\t{_ts(c)}\t{login}\n")
    _copy(conn, "users", "organization_id, email, display_name, role, password_hash, created_at, last_login_at",
          lines)
    counts["users"] = n_users

    # conversations and their messages, generated together so times and ids agree
    conv_lines: list[str] = []
    conv_owner: list[int] = []

    def messages() -> Any:
        made = 0
        cid = 0
        while made < n_msgs:
            cid += 1
            user = rng.randint(1, n_users)
            conv_owner.append(user)
            start = created[user - 1] + timedelta(seconds=rng.randint(0, 3600 * 24 * 300))
            at = start
            turns = min(rng.randint(1, 12), max(1, (n_msgs - made + 1) // 2))
            for _ in range(turns):
                at += timedelta(seconds=rng.randint(5, 900))
                q = prose.text(max(3, int(rng.lognormvariate(2.6, 0.6))))
                yield f"{cid}\tuser\t{q}\t{q.count(' ') + 1}\t{_ts(at)}\n"
                at += timedelta(seconds=rng.randint(2, 60))
                a = prose.text(max(8, int(rng.lognormvariate(4.1, 0.7))))
                yield f"{cid}\tassistant\t{a}\t{a.count(' ') + 1}\t{_ts(at)}\n"
                made += 2
            title = prose.text(rng.randint(2, 6)).rstrip(".?")
            conv_lines.append(f"{user}\t{1 + user % n_orgs}\t{title}\t{_ts(start)}\t{_ts(at)}\n")
        counts["messages"] = made

    # messages reference conversations: stage the messages in a temporary table without the foreign key
    conn.execute("CREATE TEMP TABLE bench_messages (id bigserial, conversation_id bigint, role text, content text, "
                 "token_count bigint, created_at timestamptz) ON COMMIT DROP")
    _copy(conn, "bench_messages", "conversation_id, role, content, token_count, created_at", messages())
    _copy(conn, "conversations", "user_id, organization_id, title, created_at, updated_at", conv_lines)
    counts["conversations"] = len(conv_lines)
    conn.execute("INSERT INTO messages (conversation_id, role, content, token_count, created_at) "
                 "SELECT conversation_id, role, content, token_count, created_at FROM bench_messages ORDER BY id")

    indicators = [(f"IND.{i:03d}", prose.text(rng.randint(3, 7)).rstrip(".?"),
                   rng.choice(("tCO2e", "%", "m3", "FTE", "h", "people", "EUR")),
                   rng.choice(("climate", "environment", "social", "governance", "finance"))) for i in range(40)]
    _copy(conn, "indicators", "code, name, unit, theme, description, created_at",
          (f"{c}\t{n}\t{u}\t{t}\t{prose.text(rng.randint(10, 40))}\t{_ts(ANCHOR - timedelta(days=3000))}\n"
           for c, n, u, t in indicators))
    counts["indicators"] = len(indicators)

    def series() -> Any:
        months = 120
        for org in range(1, n_orgs + 1):
            for ind in range(1, len(indicators) + 1):
                base = math.exp(rng.uniform(1, 12))
                trend = rng.gauss(0.002, 0.01)
                season = rng.uniform(0, 0.2)
                source = rng.choice(("survey", "meter reading", "estimate", "annual report", "partner data"))
                digits = rng.choice((0, 2, 4))
                for m in range(months):
                    y, mo = divmod(m, 12)
                    start = date(2015 + y, mo + 1, 1)
                    end = date(2015 + y + (mo + 1) // 12, (mo + 1) % 12 + 1, 1) - timedelta(days=1)
                    v = base * (1 + trend) ** m * (1 + season * math.sin(mo / 12 * 2 * math.pi)) * rng.gauss(1, 0.05)
                    rec = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(
                        days=rng.randint(1, 45), seconds=rng.randint(0, 86399))
                    yield f"{ind}\t{org}\t{start}\t{end}\t{round(max(v, 0), digits)}\t{source}\t{_ts(rec)}\n"

    _copy(conn, "measurements",
          "indicator_id, organization_id, period_start, period_end, value, source, recorded_at", series())
    counts["measurements"] = n_orgs * len(indicators) * 120
    counts["file_uploads"] = _uploads(conn, uploads_dir, rng, prose, scale, n_users, conv_owner)
    conn.commit()
    return counts


def _uploads(conn: Any, uploads_dir: Path, rng: random.Random, prose: Prose, scale: float, n_users: int,
             conv_owner: list[int]) -> int:
    target = int(UPLOAD_BYTES_PER_SCALE * scale)
    total = 0
    rows = []
    n = 0
    while total < target:
        n += 1
        size = int(math.exp(rng.uniform(math.log(1024), math.log(8 * 2**20))))
        conv = rng.randrange(len(conv_owner)) + 1 if rng.random() < 0.7 else None
        owner = conv_owner[conv - 1] if conv else rng.randint(1, n_users)
        if rng.random() < 0.8:
            ext, ctype, magic = rng.choice(BINARY_TYPES)
            data = magic + rng.randbytes(max(0, size - len(magic)))
        else:
            ext, ctype = rng.choice(TEXT_TYPES)
            size = min(size, 2 * 2**20)
            if ext == "csv":
                lines = ["site,indicator,period,value"] + [
                    f"site-{rng.randint(1, 400)},IND.{rng.randint(0, 39):03d},2024-{rng.randint(1, 12):02d},"
                    f"{rng.uniform(0, 10000):.2f}" for _ in range(size // 34)]
                data = ("\n".join(lines) + "\n").encode()
            elif ext == "json":
                data = json.dumps([{"indicator": f"IND.{rng.randint(0, 39):03d}", "value": round(rng.gauss(100, 30), 3),
                                    "note": prose.text(rng.randint(3, 12))} for _ in range(size // 110)]).encode()
            else:
                data = prose.text(max(10, size // 7), newline="\n").encode()
        rel = f"{UPLOADS_FOLDER}/u{owner % 1000:03d}/{n:06d}.{ext}"
        path = uploads_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
        at = ANCHOR - timedelta(seconds=rng.randint(0, 3600 * 24 * 700))
        name = f"{prose.words[rng.randrange(100, 600)]}_{n}.{ext}"
        rows.append(f"{owner}\t{conv if conv else chr(92) + 'N'}\t{name}\t{rel}\t{ctype}\t{len(data)}\t"
                    f"{hashlib.sha256(data).hexdigest()}\t{_ts(at)}\n")
    _copy(conn, "file_uploads",
          "owner_id, conversation_id, original_name, storage_path, content_type, size_bytes, sha256, created_at",
          rows)
    return n
