"""The foundation every other package stands on; it imports no other HiveMind package.

errors (and their one mapping to gRPC and HTTP status), console (one-line errors,
``--json``, tables, ``one_line``), units (sizes, CPUs, CPT), settings (the typed loader and
``HubSettings``), grpcutil (the error/auth interceptor, message limits, channel options),
keys and files (key material, 0600/0644 state files), names (state-directory file names,
certificate names), system (commands, sysctl), redisdb (connections, Lua libraries).
"""
