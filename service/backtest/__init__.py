"""The back-test lab: does the health score predict churn, how early, and which
weights would do better? (``vitals backtest``; docs/backtest.md.)

* :mod:`~service.backtest.outcomes` -- churn and renewal outcomes, from
  ``contract`` events or an outcomes file, and the label of a snapshot;
* :mod:`~service.backtest.snapshots` -- every account's score at each
  snapshot date, exactly as ``vitals replay --as-of`` gives it (one replay
  pass), or as the history sink stored it (``--from-db``);
* :mod:`~service.backtest.figures` -- the statistics, pure functions of
  numbers: ROC and PR AUC, churn rates, lift, precision at k, lead times,
  bootstrap intervals over accounts, weight fitting;
* :mod:`~service.backtest.lab` -- one report's figures, as JSON-ready dicts;
* :mod:`~service.backtest.report` -- the HTML page (inline SVG charts,
  nothing loaded at view time).

It may import ``schemas``, ``service.model``, ``service.processing`` and
``service.history`` (and numpy, for the fitting); never ``streams``,
``service.tools`` or ``service.cli``. Only the command line imports it (the
import-linter contracts in ``pyproject.toml``).
"""
