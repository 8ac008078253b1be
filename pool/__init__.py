"""The node pool: gRPC over the overlay, registry, scheduler, ledger (see DESIGN.md section 4)."""
