"""Speed and memory measurements of vlalign against baselines and peers; run with ``python -m benchmarks``."""
