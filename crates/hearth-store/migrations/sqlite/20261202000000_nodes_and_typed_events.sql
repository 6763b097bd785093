-- Nodes and leases replace the owning server's PID: a sandbox is owned by
-- the node that runs its VM, under a fencing token (the node's lease epoch).

-- One row per node (a `hearth serve` process, by a node id that persists in
-- its home). `epoch` grows each time the node takes a new lease; writes that
-- depend on owning a sandbox check it, so a node whose lease was taken over
-- can no longer change what it used to own.
CREATE TABLE nodes (
    id               TEXT PRIMARY KEY NOT NULL,
    url              TEXT NOT NULL,
    hostname         TEXT NOT NULL,
    home             TEXT NOT NULL,
    epoch            INTEGER NOT NULL,
    -- alive, left (shut down cleanly) or expired (lease taken over).
    state            TEXT NOT NULL,
    started_ms       INTEGER NOT NULL,
    heartbeat_ms     INTEGER NOT NULL,
    -- Bumped by every heartbeat: other nodes watch it change.
    heartbeat_seq    INTEGER NOT NULL,
    lease_expires_ms INTEGER NOT NULL,
    -- JSON: what the node may run at once, and what it runs now.
    capacity         TEXT NOT NULL,
    load             TEXT NOT NULL
);

-- Sandboxes recorded by servers before nodes existed have no owner: the
-- next server records them as lost, as it did before.
ALTER TABLE sandboxes ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN node_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes DROP COLUMN server_pid;
-- When a running sandbox times out, ms since the epoch, so that any node
-- can show it.
ALTER TABLE sandboxes ADD COLUMN expires_ms INTEGER;
CREATE INDEX sandboxes_by_owner ON sandboxes (node_id, node_epoch);

-- Which node wrote an event, and the version of its payload's schema.
ALTER TABLE events ADD COLUMN node_id TEXT;
ALTER TABLE events ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
