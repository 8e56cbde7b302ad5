"""Deterministic ImpactBot-like data for benchmarks: chat messages (text), measurements (numbers)."""

from __future__ import annotations

from typing import Any

WORDS = ("impact measurement indicator outcome beneficiaries baseline target survey households school "
         "water sanitation health income livelihood training women youth community report quarter region "
         "district partner programme evidence theory change output activity budget data quality the of and "
         "to in for with on we our this that how what").split()


def generate(conn: Any, megabytes: int) -> dict[str, int]:
    """Fill the connected database with about ``megabytes`` of table data; returns row counts."""
    rows = max(1000, megabytes * 1024 * 1024 // 420)
    conn.execute("SELECT setseed(0.42)")
    conn.execute("""
        CREATE TABLE users (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL, name text,
                            created_at timestamptz NOT NULL, last_login_at timestamptz);
        CREATE TABLE messages (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id),
                               role text NOT NULL, content text NOT NULL, created_at timestamptz NOT NULL);
        CREATE TABLE measurements (id bigserial PRIMARY KEY, indicator text NOT NULL, period date NOT NULL,
                                   value numeric(18, 4) NOT NULL, source text);
        CREATE TEMP TABLE seed_words AS SELECT w FROM unnest(%(words)s::text[]) w;
        -- a 3000-word vocabulary: the common words plus syllable-built ones, drawn with a Zipf-like skew
        CREATE TEMP TABLE words AS
          SELECT row_number() OVER () AS n, w FROM (
            SELECT w FROM seed_words
            UNION ALL
            SELECT s1 || s2 || s3 FROM unnest('{ka,lo,mi,ne,su,ta,ri,po,de,an,el,or,us,ba,ve,zi}'::text[]) s1,
                   unnest('{ra,ti,mo,en,al,is,on,ur,ed,ly}'::text[]) s2,
                   unnest('{n,s,t,r,l,a,x,m,d,ng,ck,th,ph,ve,ss,ze,ge,ry,ia,um}'::text[]) s3
          ) v;
        CREATE INDEX ON words (n);
    """.replace("%(words)s", "'{" + ",".join(WORDS) + "}'"))
    users = max(100, rows // 50)
    conn.execute("INSERT INTO users (email, name, created_at, last_login_at) "
                 "SELECT 'user' || g || '@example.org', 'User ' || g, now() - g * interval '1 minute', "
                 "now() - (g %% 30) * interval '1 day' FROM generate_series(1, %s) g", (users,))
    conn.execute("""
        INSERT INTO messages (user_id, role, content, created_at)
        WITH v AS (SELECT array_agg(w ORDER BY n) AS a, count(*) AS c FROM words)
        SELECT 1 + g %% %(users)s, CASE WHEN g %% 2 = 0 THEN 'user' ELSE 'assistant' END,
               (SELECT string_agg(v.a[greatest(1, floor(exp(random() * ln(v.c)))::int) + 0 * k], ' ')
                  FROM generate_series(1, 30 + (g %% 40)) k)
               || ' ' || g, now() - g * interval '1 second'
        FROM generate_series(1, %(rows)s) g, v
    """, {"users": users, "rows": rows})
    conn.execute("INSERT INTO measurements (indicator, period, value, source) "
                 "SELECT 'IND-' || (g %% 200), date '2020-01-01' + (g %% 1500), random() * 10000, 'survey' "
                 "FROM generate_series(1, %s) g", (rows // 2,))
    conn.commit()
    return {"users": users, "messages": rows, "measurements": rows // 2}
