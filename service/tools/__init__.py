"""Tools for developers and operators: the customer simulator, the demo, the benchmarks,
the local Kafka broker and the child-process helpers they share.

May import anything below the command line (streams, history, runtime, model, schemas);
only ``service.cli`` (and the tests) import them.
"""
