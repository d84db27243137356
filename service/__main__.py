"""``python -m service``: the vitals command line."""

from service.cli.main import run

run()
