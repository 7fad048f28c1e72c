"""Benchmarks that print figures. `python -m bench [NAME ...]` runs `bench/NAME.py`'s `run`."""
