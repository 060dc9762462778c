"""``livesight eval``: the field's benchmarks (StreamingBench, OVO-Bench) and LiveSight's own JSONL run
through LiveSight.

The pure half (no model code): :mod:`app.eval.items` (one question, :class:`EvalItem`),
:mod:`app.eval.formats` (the benchmarks' own files -> items), :mod:`app.eval.tasks` (every task spelling ->
canonical task and group), :mod:`app.eval.scoring` (official and strict scoring), :mod:`app.eval.aggregate`
(per task, group, overall) and :mod:`app.eval.report` (predictions.jsonl, summary.json, the markdown table).
:mod:`app.eval.runner` plays the videos through a session and asks the questions.
"""
