"""The keras-globalpool benchmark suite. Run it with `python -m benchmarks.run`."""
