"""The standing adversarial suite: hostile and malformed input, forged and replayed requests,
faults and kill -9 at each call site. Each engineer's cases live in their own file; every case
runs on SQLite and (SOP_TEST_DATABASE=postgres) on PostgreSQL."""
