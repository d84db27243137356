"""The HTTP API's pieces that need no server: the OpenAPI document, request-body intake
(validation exactly like the Kafka path) and the portfolio aggregation.

The handlers themselves live in ``streams/web/``. May import ``service.runtime``,
``service.processing``, ``service.model`` and ``schemas``.
"""
