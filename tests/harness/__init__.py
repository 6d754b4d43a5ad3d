"""Helpers shared by the end-to-end suite (tests/e2e) and the benchmark
harness (bench/run.py): real processes, their logs, ports and memory."""
