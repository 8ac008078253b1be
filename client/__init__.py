"""Clients of the pool and of the web API, and the command lines built on them.

channel (an ``Identity`` and mTLS channels to the pool), grpcclient and taskclient (the
task commands over gRPC), views (messages as JSON-ready dicts and table rows), poolcli
(``hivemind-pool`` and the task commands both CLIs share), apiclient and cli (``hivemind``
over the web's JSON API). Data as blobs: transfer (the upload and download algorithms over
either client), inputs (a submission's bundle and inputs, checked then uploaded), digests
(the local digest cache), results (a result downloaded, verified, unpacked), progress
(terminal bars). Nothing here imports a server, Flask or Redis.
"""
