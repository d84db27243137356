"""The ``vitals`` command line: ``main`` (the group, lazy sub-command loading, one-line
errors) and one module per command group.

The top layer: may import every other part of vitals, and is the only one that may
import ``service.tools``.
"""
