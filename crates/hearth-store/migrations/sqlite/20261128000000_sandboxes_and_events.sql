-- Sandboxes as the server knows them, from the create request to their end,
-- kept after they end so that callers can ask how a sandbox ended.
CREATE TABLE sandboxes (
    id           TEXT PRIMARY KEY NOT NULL,
    state        TEXT NOT NULL,
    image        TEXT NOT NULL,
    vcpus        INTEGER NOT NULL,
    memory_bytes INTEGER NOT NULL,
    disk_bytes   INTEGER NOT NULL,
    -- Lifetime from readiness in milliseconds; NULL means no limit.
    timeout_ms   INTEGER,
    -- JSON object of caller labels.
    labels       TEXT NOT NULL DEFAULT '{}',
    accelerator  TEXT,
    boot_ms      INTEGER,
    created_ms   INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    ended_ms     INTEGER,
    end_reason   TEXT,
    end_message  TEXT,
    -- The server process that owned the sandbox, for finding the ones a
    -- crashed server left behind.
    server_pid   INTEGER NOT NULL
);

CREATE INDEX sandboxes_by_state ON sandboxes (state);

-- Append-only event log. `seq` is the event id: strictly increasing across
-- the whole store (AUTOINCREMENT never reuses a value), so "everything after
-- N" is exact, for resuming a stream.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT,
    at_ms      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL
);

CREATE INDEX events_by_sandbox ON events (sandbox_id, seq);
