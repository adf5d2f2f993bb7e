"""The evaluation subsystem behind ``reason eval``: run a strategy over a benchmark,
grade every candidate, and measure accuracy against compute.

- :mod:`reason.eval.run`: the run (:class:`~reason.eval.run.EvalRun`), one graded record
  per problem, the task as the search sees it (no reference, no hidden tests).
- :mod:`reason.eval.grading`: is a candidate right (batch grading, code in the sandbox).
- :mod:`reason.eval.results`: the run directory (``run.json``, ``results.jsonl``,
  ``summary.json``), crash-safe and resumable.
- :mod:`reason.eval.metrics`: maj@n, weighted@n, naive@n and pass@k over subsets.
- :mod:`reason.eval.report` and :mod:`reason.eval.plots`: the tables and the plots.
- :mod:`reason.eval.cli`: the ``reason eval`` command.

Answers are extracted, compared and voted on by :mod:`reason.answers`, the same code the
search policies use; datasets are plugins (``reason_register_datasets``). Nothing here is
imported by ``import reason``; this package imports nothing heavy itself (matplotlib,
sympy and docker load when a plot, an equivalence check or a sandbox is first needed).
"""
