"""The hub's composition root: the one package that wires mesh, pool and web together.

init (``hivemind-hub init``: CA, keys, ``hub.toml``), serve (``hivemind-hub up``: every
service on one exit stack), webprocess (the supervised web child), redis_server, and cli
(``hivemind-hub``).
"""
