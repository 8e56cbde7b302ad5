-- migrate:no-transaction
-- Migration: file_uploads_sha256_index
-- Find duplicate uploads by content. Built CONCURRENTLY so uploads are not blocked while it is
-- built on a populated table, which cannot run inside a transaction (hence the header above).

-- migrate:up
CREATE INDEX CONCURRENTLY IF NOT EXISTS file_uploads_sha256_idx ON file_uploads (sha256);

-- migrate:down
DROP INDEX CONCURRENTLY IF EXISTS file_uploads_sha256_idx;
