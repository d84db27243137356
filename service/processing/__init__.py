"""Processing around the model that needs no broker: the scoring clock, the Java-compatible
partitioner and ``vitals replay``'s driver over a file of events.

Pure like the model (no Kafka, SQL or HTTP I/O); may import ``service.model`` and ``schemas``.
"""
