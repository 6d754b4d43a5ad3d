"""Helpers shared by the end-to-end suite (tests/e2e) and the benchmark
harness (bench/run.py): real processes, their logs, ports and memory (procs),
the distributed mode's Redis, control and data planes (cluster), and how
s3gate's TOML config is written (config)."""
