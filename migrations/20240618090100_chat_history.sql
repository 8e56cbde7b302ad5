-- Migration: chat_history
-- Conversations of a user with ImpactBot and their messages, in order.

-- migrate:up
CREATE TABLE conversations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    organization_id  bigint REFERENCES organizations (id) ON DELETE SET NULL,
    title            text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversations_updated_after_creation CHECK (updated_at >= created_at)
);

CREATE TABLE messages (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id  bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role             text NOT NULL,
    content          text NOT NULL,
    token_count      bigint CHECK (token_count >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_role_check CHECK (role IN ('system', 'user', 'assistant', 'tool'))
);

-- a user's conversations, newest first; a conversation's messages, in order
CREATE INDEX conversations_user_id_updated_at_idx ON conversations (user_id, updated_at DESC);
CREATE INDEX conversations_organization_id_idx ON conversations (organization_id);
CREATE INDEX messages_conversation_id_created_at_idx ON messages (conversation_id, created_at, id);

-- migrate:down
DROP TABLE messages;
DROP TABLE conversations;
