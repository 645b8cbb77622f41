"""Benchmarks of livekit-lifecycle against the seed's hand-written design.

Run ``python -m benchmarks`` from the repository root (``--quick`` for a
smoke run, ``--help`` for options). See ``docs/performance.md``.
"""
