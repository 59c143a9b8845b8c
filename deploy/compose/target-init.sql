-- The quick start's target database (run once by the postgres image, in database `shop`, when its
-- volume is empty). A tiny stand-in for a real application database: a `shop` schema with fake
-- customer data, owned by `shop_owner`, the role pgward logs in as. Clients never learn its password;
-- they authenticate to pgward instead.
--
-- The password comes from the container's environment (SHOP_OWNER_PASSWORD, set in deploy/.env);
-- `\getenv` needs psql 15 or newer, which the postgres:17 image has. If the variable is missing the
-- statement fails and the container's initialisation stops (ON_ERROR_STOP), rather than creating a
-- role with a guessable password.

\getenv shop_owner_password SHOP_OWNER_PASSWORD

CREATE ROLE shop_owner LOGIN PASSWORD :'shop_owner_password';
GRANT CONNECT, TEMPORARY ON DATABASE shop TO shop_owner;
REVOKE CONNECT ON DATABASE shop FROM PUBLIC;

CREATE SCHEMA shop AUTHORIZATION shop_owner;

-- Everything below is created as shop_owner, so it owns its tables.
SET ROLE shop_owner;

CREATE TABLE shop.customers (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    email       text,
    phone       text,
    ssn         text,
    card_number text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shop.orders (
    id          serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES shop.customers,
    amount      numeric(10, 2) NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Fake values only: reserved example domains, 555 numbers, card numbers from the issuers' test ranges.
INSERT INTO shop.customers (name, email, phone, ssn, card_number, created_at) VALUES
    ('Ada Lindqvist',  'ada.lindqvist@example.com', '+1-212-555-0101', '900-12-0001', '4111111111111111', '2024-03-01 09:15+00'),
    ('Bruno Okafor',   'bruno.okafor@example.net',  '+1-415-555-0102', '900-12-0002', '5555555555554444', '2024-03-04 14:02+00'),
    ('Chen Moreau',    'chen.moreau@example.org',   '+1-617-555-0103', '900-12-0003', '378282246310005',  '2024-03-09 11:47+00');

INSERT INTO shop.orders (customer_id, amount, status, created_at) VALUES
    (1,  42.50, 'paid',      '2024-03-02 10:00+00'),
    (1,  17.99, 'shipped',   '2024-03-10 16:30+00'),
    (2, 120.00, 'pending',   '2024-03-05 08:45+00'),
    (3,   9.90, 'cancelled', '2024-03-11 19:05+00');

RESET ROLE;
