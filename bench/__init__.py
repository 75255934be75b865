"""Speed and memory benchmarks of kneeseg (``make bench``): ``python -m bench.run --help``."""
