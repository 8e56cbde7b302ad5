-- Migration: file_uploads
-- Metadata of the files users upload. The bytes live in the host-mounted uploads folder
-- (./backend/uploads); `storage_path` is relative to it, and `sha256` lets
-- `invoke migrate.check` prove every file is there with the bytes that were uploaded.

-- migrate:up
CREATE TABLE file_uploads (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id         bigint NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    conversation_id  bigint REFERENCES conversations (id) ON DELETE SET NULL,
    original_name    text NOT NULL,
    storage_path     text NOT NULL,
    content_type     text NOT NULL DEFAULT 'application/octet-stream',
    size_bytes       bigint NOT NULL,
    sha256           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT file_uploads_storage_path_key UNIQUE (storage_path),
    CONSTRAINT file_uploads_original_name_present CHECK (btrim(original_name) <> ''),
    CONSTRAINT file_uploads_storage_path_relative CHECK (
        storage_path <> '' AND storage_path !~ '^/' AND storage_path !~ '(^|/)\.\.?(/|$)'
    ),
    CONSTRAINT file_uploads_content_type_format CHECK (content_type ~ '^[a-z0-9.+-]+/[a-zA-Z0-9.+-]+'),
    CONSTRAINT file_uploads_size_nonnegative CHECK (size_bytes >= 0),
    CONSTRAINT file_uploads_sha256_format CHECK (sha256 ~ '^[0-9a-f]{64}$')
);

CREATE INDEX file_uploads_owner_id_idx ON file_uploads (owner_id, created_at DESC);
CREATE INDEX file_uploads_conversation_id_idx ON file_uploads (conversation_id);

-- migrate:down
DROP TABLE file_uploads;
