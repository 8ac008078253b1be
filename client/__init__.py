"""Clients of the pool and of the web API, and the command lines built on them.

channel (an ``Identity`` and mTLS channels to the pool), grpcclient and taskclient (the
task commands over gRPC), views (messages as JSON-ready dicts and table rows), poolcli
(``hivemind-pool`` and the task commands both CLIs share), apiclient and cli (``hivemind``
over the web's JSON API). Nothing here imports a server, Flask or Redis.
"""
