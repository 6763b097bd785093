-- Durable runs: programs whose every side effect is journaled, resumed in a
-- fresh VM after any crash. See docs/ARCHITECTURE.md, "Durable runs".

-- Content-addressed bytes: pinned programs and large step results. A value
-- is stored once however many steps or runs refer to it.
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY NOT NULL,
    size       INTEGER NOT NULL,
    data       BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE runs (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT,
    -- pending, running, waiting, needs_attention, completed, failed, cancelled.
    state        TEXT NOT NULL,
    -- Blob digest of the pinned program (every launch runs these bytes).
    program      TEXT NOT NULL REFERENCES blobs (digest),
    -- JSON: how to launch it (command, image, memory, restarts, ...).
    spec         TEXT NOT NULL,
    input        TEXT NOT NULL,
    output       TEXT,
    -- JSON {code, message} once failed.
    error        TEXT,
    parent_id    TEXT,
    parent_seq   INTEGER,
    -- VMs it had, and relaunches after a crash (counted against its limit).
    launches     INTEGER NOT NULL DEFAULT 0,
    restarts     INTEGER NOT NULL DEFAULT 0,
    -- When a pending or waiting run may next be launched; NULL: at once
    -- (pending) or on an event (waiting for a signal without timeout).
    wake_ms      INTEGER,
    -- JSON: what a waiting run waits for.
    waiting_for  TEXT,
    deadline_ms  INTEGER,
    -- The sandbox of the current launch.
    sandbox_id   TEXT,
    -- The owner while claimed (pending) or running: its node and lease
    -- epoch, the fencing token of every journal write. NULL while waiting
    -- or needing attention: any node may pick it up.
    node_id      TEXT,
    node_epoch   INTEGER,
    cancelled_by TEXT,
    created_ms   INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    ended_ms     INTEGER
);

CREATE INDEX runs_by_state ON runs (state, wake_ms);
CREATE INDEX runs_by_parent ON runs (parent_id);
CREATE INDEX runs_by_creation ON runs (created_ms DESC, id DESC);

-- The journal: one row per step of a run.
CREATE TABLE steps (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    seq         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    args_digest TEXT NOT NULL,
    effect      TEXT NOT NULL,
    state       TEXT NOT NULL,
    -- The result as JSON when small, else the digest of its JSON blob.
    result      TEXT,
    result_blob TEXT REFERENCES blobs (digest),
    error       TEXT,
    -- JSON array of attempts.
    attempts    TEXT NOT NULL,
    retry_at_ms INTEGER,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Signals sent to runs. The n-th wait for a name receives the n-th signal
-- of that name, so delivery replays exactly.
CREATE TABLE signals (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL REFERENCES runs (id),
    name    TEXT NOT NULL,
    data    TEXT NOT NULL,
    sent_ms INTEGER NOT NULL
);

CREATE INDEX signals_by_run ON signals (run_id, name, id);

ALTER TABLE events ADD COLUMN run_id TEXT;
CREATE INDEX events_by_run ON events (run_id, seq);
