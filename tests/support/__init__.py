"""What the tests and the benchmarks share: labs of network namespaces, pools and web apps
on loopback, a headless browser, and the rule for missing prerequisites.

A package of its own so that nothing imports a ``conftest.py``: those only declare
fixtures, built from what is here.
"""
