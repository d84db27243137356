"""vitals: everything that runs besides the stream topology (``streams``) and the
contracts (``schemas``), in one sub-package per layer, from the top down:

``cli`` (the command line) > ``tools`` (simulator, demo, benchmarks, local Kafka) >
[``streams``] > ``history`` (SQL) | ``api`` (HTTP helpers) > ``runtime`` (settings,
metrics, topics, webhook) > ``processing`` (clock, partitioner, replay) > ``model``
(the pure scoring model). A layer imports only the layers below it; the
``[tool.importlinter]`` contracts in ``pyproject.toml`` enforce it.
"""
