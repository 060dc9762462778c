"""Stream for days: question latency, retrieval time, RSS and disk from 1 minute to 24 hours (recorded KV).

The bench lives in :mod:`app.bench.stream` (``run_days``; it shares that bench's question timing and
its docstring ``DAYS_DOC`` says how the recorded KV is replayed); this module only gives it its own
name, so its BENCHMARKS.md section stands beside the one-hour ``stream`` section.
"""

from app.bench.stream import add_days_arguments as add_arguments
from app.bench.stream import run_days as run

__all__ = ["add_arguments", "run"]
