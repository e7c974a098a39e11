-- Migration number: 0002
INSERT INTO orders (customer, item, status, placed_at) VALUES
    ('Ada', 'Trail Pack 30', 'delivered', '2026-11-02'),
    ('Grace', 'Camp Stove', 'delivered', '2026-11-09'),
    ('Linus', 'Rain Shell', 'cancelled', '2026-11-12'),
    ('Ada', 'Head Torch', 'shipped', '2026-11-20'),
    ('Barbara', 'Trail Pack 45', 'shipped', '2026-11-24'),
    ('Ken', 'Water Filter', 'shipped', '2026-11-28'),
    ('Grace', 'Sleeping Mat', 'pending', '2026-12-01'),
    ('Dennis', 'Camp Stove', 'pending', '2026-12-03'),
    ('Linus', 'Trail Pack 30', 'pending', '2026-12-04'),
    ('Barbara', 'Rain Shell', 'pending', '2026-12-05');
