-- Hearth's store on PostgreSQL: the same tables as on SQLite, shared by
-- every node of a cluster.

-- One row per node (a `hearth serve` process, by a node id that persists in
-- its home). `epoch` grows each time the node takes a new lease; writes that
-- depend on owning a sandbox check it (the fencing token), so a node whose
-- lease was taken over can no longer change what it used to own.
CREATE TABLE nodes (
    id               TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    hostname         TEXT NOT NULL,
    home             TEXT NOT NULL,
    epoch            BIGINT NOT NULL,
    -- alive, left (shut down cleanly) or expired (lease taken over).
    state            TEXT NOT NULL,
    started_ms       BIGINT NOT NULL,
    heartbeat_ms     BIGINT NOT NULL,
    -- Bumped by every heartbeat: other nodes watch it change.
    heartbeat_seq    BIGINT NOT NULL,
    lease_expires_ms BIGINT NOT NULL,
    -- JSON: what the node may run at once, and what it runs now.
    capacity         TEXT NOT NULL,
    load             TEXT NOT NULL
);

-- Sandboxes, from the create request to their end, kept after they end so
-- that callers can ask how a sandbox ended.
CREATE TABLE sandboxes (
    id           TEXT PRIMARY KEY,
    state        TEXT NOT NULL,
    image        TEXT NOT NULL,
    vcpus        BIGINT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    disk_bytes   BIGINT NOT NULL,
    -- Lifetime from readiness in milliseconds; NULL means no limit.
    timeout_ms   BIGINT,
    -- When a running sandbox times out, ms since the epoch.
    expires_ms   BIGINT,
    -- JSON object of caller labels.
    labels       TEXT NOT NULL DEFAULT '{}',
    accelerator  TEXT,
    boot_ms      BIGINT,
    created_ms   BIGINT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    ended_ms     BIGINT,
    end_reason   TEXT,
    end_message  TEXT,
    -- The owner: the node running its VM, and the lease epoch it ran under.
    node_id      TEXT NOT NULL,
    node_epoch   BIGINT NOT NULL
);

CREATE INDEX sandboxes_by_state ON sandboxes (state);
CREATE INDEX sandboxes_by_owner ON sandboxes (node_id, node_epoch);
CREATE INDEX sandboxes_by_creation ON sandboxes (created_ms DESC, id DESC);

-- The last event number handed out. Every transaction that appends an event
-- takes this row's lock to number it and holds it until it commits, so events
-- become visible in number order: a reader that has seen event N has seen
-- every event before N, and "everything after N" is exact with any number
-- of writers (see docs/ARCHITECTURE.md, "Event numbering").
CREATE TABLE event_counter (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last BIGINT NOT NULL
);
INSERT INTO event_counter (id, last) VALUES (1, 0);

-- Append-only event log.
CREATE TABLE events (
    seq        BIGINT PRIMARY KEY,
    sandbox_id TEXT,
    node_id    TEXT,
    at_ms      BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    data       TEXT NOT NULL
);

CREATE INDEX events_by_sandbox ON events (sandbox_id, seq);
