"""HiveMind: pool scattered machines into one private compute cluster.

The top-level folders of the repository (``core/``, ``model/``, ``client/``, ``mesh/``,
``pool/``, ``agent/``, ``web/``, ``hub/``, ``protos/``) are the subpackages of this one import
root; docs/architecture.md describes each and what it may import.
"""

import os

__version__ = "0.1.0"

# gRPC's C core writes log lines of its own to stderr ("Handshake failed …" beside the one-line
# error a command prints). It reads GRPC_VERBOSITY once, when grpc is first imported, so the
# switch sits here, before any HiveMind module imports grpc: every command line, and each
# process it starts, is quiet. GRPC_VERBOSITY set by hand (to debug) still wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
