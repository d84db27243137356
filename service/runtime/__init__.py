"""What a running vitals process needs besides the model: typed settings, the Prometheus
metrics (declared here only), topic administration, dead-letter records, the webhook
client and log rate limits.

May import ``service.processing``, ``service.model`` and ``schemas``.
"""
