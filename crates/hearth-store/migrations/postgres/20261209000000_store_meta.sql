-- Facts about the store itself. Its identity is made once, when a server
-- first adopts the store, and the server's home records it: a home whose
-- store later comes back empty, missing or different refuses to start
-- instead of silently beginning a new history.
CREATE TABLE store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
