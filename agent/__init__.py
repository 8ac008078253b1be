"""The worker daemon and the ``hivemind-agent`` CLI: join, overlay, service, status, leave."""
