"""HiveMind: pool scattered machines into one private compute cluster.

The top-level folders of the repository (``core/``, ``model/``, ``client/``, ``mesh/``,
``pool/``, ``agent/``, ``web/``, ``hub/``, ``protos/``) are the subpackages of this one import
root; docs/architecture.md describes each and what it may import.
"""

__version__ = "0.1.0"
