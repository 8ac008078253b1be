"""Identity and overlay: the CA, join tokens, enrollment, overlay IPAM, WireGuard control,
the underlay guard and node records. ``membership`` is what the rest of the hub may ask
about members (revocation, role, state); nothing else reads mesh's Redis keys."""
