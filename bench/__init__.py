"""Benchmarks of the engine and their workload; not part of the installed `wtb_dagster`."""
