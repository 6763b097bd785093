-- Blobs too large to hold in memory at once (durable workspace layers) are
-- stored as chunks, each an ordinary blob: the whole blob's row then keeps
-- no data and lists its chunks' digests in order (JSON); NULL for a blob
-- stored whole.
ALTER TABLE blobs ADD COLUMN chunks TEXT;
