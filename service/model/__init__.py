"""The pure scoring model: account state, event-time windows, the metric catalogue,
scorecards (and the shipped YAML files), evaluation and playbook decisions.

Plain typed functions over plain data. It may import ``schemas`` and pure libraries
(pydantic, PyYAML, orjson, mypy_extensions for compile hints), nothing else of
vitals, and no Kafka, SQL, HTTP, asyncio or Prometheus code (``lint-imports``
checks it). Some of its modules can be compiled with mypyc (README, "Compiled
model"); the interpreted code is the reference.
"""
