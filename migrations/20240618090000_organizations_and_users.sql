-- Migration: organizations_and_users
-- The accounts of ImpactBot v2: organisations and their users. `last_login_at` feeds the guide's
-- "Check recent user activity" query (indexed for its 7-day window).

-- migrate:up
CREATE TABLE organizations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        text NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT organizations_slug_key UNIQUE (slug),
    CONSTRAINT organizations_slug_format CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    CONSTRAINT organizations_name_present CHECK (btrim(name) <> '')
);

CREATE TABLE users (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint REFERENCES organizations (id) ON DELETE SET NULL,
    email            text NOT NULL,
    display_name     text NOT NULL DEFAULT '',
    role             text NOT NULL DEFAULT 'member',
    password_hash    text,
    is_active        boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_login_at    timestamptz,
    CONSTRAINT users_role_check CHECK (role IN ('admin', 'analyst', 'member', 'viewer')),
    CONSTRAINT users_email_format CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    CONSTRAINT users_login_after_creation CHECK (last_login_at IS NULL OR last_login_at >= created_at)
);

-- one account per address, whatever its case
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_organization_id_idx ON users (organization_id);
CREATE INDEX users_last_login_at_idx ON users (last_login_at);

-- migrate:down
DROP TABLE users;
DROP TABLE organizations;
