"""The hub control plane: CA, join tokens, enrollment, overlay IPAM, WireGuard, revocation."""
