-- Tiny Northwind Gadgets shop database used by the demo `sql_answer` node.
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    city TEXT NOT NULL,
    tier TEXT NOT NULL
);

CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    category TEXT NOT NULL,
    price REAL NOT NULL,
    stock INTEGER NOT NULL
);

CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    product_id INTEGER NOT NULL REFERENCES products (id),
    quantity INTEGER NOT NULL,
    status TEXT NOT NULL,
    order_date TEXT NOT NULL
);

INSERT INTO customers (id, name, city, tier) VALUES
    (1, 'Maria Lopez', 'Denver', 'Gold'),
    (2, 'James Okafor', 'Austin', 'Silver'),
    (3, 'Priya Raman', 'Seattle', 'Bronze'),
    (4, 'Tom Becker', 'Chicago', 'Silver'),
    (5, 'Aiko Tanaka', 'Portland', 'Gold'),
    (6, 'Lucas Martin', 'Boston', 'Bronze'),
    (7, 'Sofia Rossi', 'Miami', 'Bronze'),
    (8, 'Daniel Kim', 'Reno', 'Silver'),
    (9, 'Emma Novak', 'Denver', 'Bronze'),
    (10, 'Omar Haddad', 'Phoenix', 'Gold');

INSERT INTO products (id, name, category, price, stock) VALUES
    (1, 'Aurora Lamp', 'Lighting', 49.99, 37),
    (2, 'Halo Desk Light', 'Lighting', 39.50, 12),
    (3, 'Lumen Strip', 'Lighting', 24.99, 80),
    (4, 'Nimbus Speaker', 'Audio', 89.00, 15),
    (5, 'Cirrus Headphones', 'Audio', 149.00, 8),
    (6, 'Echo Buds', 'Audio', 79.99, 0),
    (7, 'Volt Power Bank', 'Power', 34.99, 42),
    (8, 'Volt Charger', 'Power', 29.99, 65),
    (9, 'Pulse Smartwatch', 'Wearables', 199.00, 9),
    (10, 'Stride Tracker', 'Wearables', 59.00, 23),
    (11, 'Orbit Hub', 'Smart Home', 99.00, 18),
    (12, 'Beacon Doorbell', 'Smart Home', 129.00, 5),
    (13, 'Kelvin Thermostat', 'Smart Home', 169.00, 11),
    (14, 'Drift Mouse', 'Accessories', 19.99, 54);

INSERT INTO orders (id, customer_id, product_id, quantity, status, order_date) VALUES
    (1001, 1, 1, 2, 'delivered', '2024-03-02'),
    (1002, 2, 4, 1, 'delivered', '2024-03-05'),
    (1003, 3, 9, 1, 'shipped', '2024-03-09'),
    (1004, 4, 7, 3, 'pending', '2024-03-11'),
    (1005, 5, 1, 1, 'delivered', '2024-03-12'),
    (1006, 6, 14, 4, 'cancelled', '2024-03-14'),
    (1007, 7, 12, 1, 'pending', '2024-03-15'),
    (1008, 8, 5, 2, 'shipped', '2024-03-18'),
    (1009, 1, 3, 5, 'delivered', '2024-03-20'),
    (1010, 9, 8, 2, 'pending', '2024-03-21'),
    (1011, 10, 11, 1, 'returned', '2024-03-22'),
    (1012, 2, 1, 3, 'shipped', '2024-03-25'),
    (1013, 5, 10, 2, 'delivered', '2024-03-27'),
    (1014, 3, 4, 1, 'pending', '2024-03-28'),
    (1015, 4, 13, 1, 'delivered', '2024-04-01'),
    (1016, 6, 2, 2, 'shipped', '2024-04-02');
