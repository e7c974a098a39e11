-- Migration number: 0001
-- A passage's id is its vector's id in the Vectorize index (as a string); AUTOINCREMENT never
-- reuses an id, so a vector left behind can never point at another passage.
CREATE TABLE passages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    text TEXT NOT NULL UNIQUE
);
