"""A worker's HTTP/1.1 layer: the connection (parsing, bounds, states), the routes, and the bytes of
every answer (status lines, heads, error bodies, chunked bodies)."""
