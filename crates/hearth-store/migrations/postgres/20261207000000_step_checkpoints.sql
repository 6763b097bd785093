-- A durable workspace's checkpoint at each step's end (JSON: layer, blob
-- digest, parent layer); NULL without one.
ALTER TABLE steps ADD COLUMN checkpoint TEXT;
