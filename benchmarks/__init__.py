"""Benchmarks: batchrunner's pace measured against Stripe's limits and the alternatives.

Run ``python -m benchmarks [SCENARIO...] [--quick] [--json FILE]``. Each scenario starts
its own emulator process, measures, and returns figures; nothing is hard-coded and no
figure is carried over from an earlier run.
"""
