"""HiveMind: pool scattered machines into one private compute cluster.

The top-level folders of the repository (``mesh/``, ``pool/``, ``agent/``, ``web/``,
``protos/``) are the subpackages of this one import root; see README "Layout".
"""

__version__ = "0.1.0"
