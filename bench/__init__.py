"""Benchmarks for MAGE Studio (speed targets live here, never in timed tests).

Run ``python -m bench.run`` (full) or ``python -m bench.run --quick`` (toy sizes); see docs/performance.md.
"""
