"""The worker daemon and the ``hivemind-agent`` CLI: join, overlay, service, status, leave.

- cli: ``hivemind-agent`` (join, run, status, leave, images), one handler per subcommand.
- join, enroll: enrolling with a join token, leaving, starting and stopping the service.
- state, overlay: the saved enrollment and settings; bringing the WireGuard interface up.
- service: ``hivemind-agent run``, which keeps the overlay up and runs the worker and page.
- worker: the stream to the pool; taskrun: the task, its outcome and their wire forms.
- executor: runs one task in Docker, with sandbox (hardened options, mounted directories),
  output (the attach stream) and usage (CPU and memory from the cgroup).
- facts, gpus: what the machine offers; statuspage, statushtml: the local status page.
"""
