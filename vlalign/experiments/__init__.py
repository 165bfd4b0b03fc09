"""End-to-end experiments (the demo and the papers' tables), each writing metrics.json and report.md."""
