"""The master web UI and JSON API (see DESIGN.md section 6)."""
