"""``python -m service``: the vitals command line."""

from service.cli import run

run()
