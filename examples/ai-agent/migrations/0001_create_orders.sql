-- Migration number: 0001
CREATE TABLE orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    customer TEXT NOT NULL,
    item TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'shipped', 'delivered', 'cancelled')),
    placed_at TEXT NOT NULL
);
CREATE INDEX orders_by_status ON orders (status, placed_at);
