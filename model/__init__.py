"""The task model that clients, agents and servers share: resources, bundles, the checked
task spec and submission parsing, pricing, task and node states, ledger account names.

Pure code over the generated messages: no I/O, no Redis, no Flask.
"""
