-- Migration: indicators_and_measurements
-- Impact indicators (what is measured) and the measurements organisations report for a period.

-- migrate:up
CREATE TABLE indicators (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code         text NOT NULL,
    name         text NOT NULL,
    unit         text NOT NULL,
    theme        text NOT NULL,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT indicators_code_key UNIQUE (code),
    CONSTRAINT indicators_code_format CHECK (code ~ '^[A-Z][A-Z0-9_.-]*$'),
    CONSTRAINT indicators_name_present CHECK (btrim(name) <> '')
);

CREATE TABLE measurements (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    indicator_id     bigint NOT NULL REFERENCES indicators (id) ON DELETE RESTRICT,
    organization_id  bigint NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    period_start     date NOT NULL,
    period_end       date NOT NULL,
    value            numeric NOT NULL,
    source           text NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT measurements_period_order CHECK (period_end >= period_start),
    CONSTRAINT measurements_source_present CHECK (btrim(source) <> ''),
    CONSTRAINT measurements_one_per_period
        UNIQUE (indicator_id, organization_id, period_start, period_end, source)
);

CREATE INDEX indicators_theme_idx ON indicators (theme);
-- an organisation's measurements over time (the unique constraint covers by-indicator lookups)
CREATE INDEX measurements_organization_id_period_idx ON measurements (organization_id, period_start);

-- migrate:down
DROP TABLE measurements;
DROP TABLE indicators;
