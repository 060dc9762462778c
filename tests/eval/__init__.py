"""``livesight eval``: the benchmark files, scoring, aggregation and the output files."""
