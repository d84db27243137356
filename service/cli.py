"""The ``vitals`` command line.

Every sub-command lives in the module of its concept and is registered here.
Contract: results go to stdout (JSON lines where a program reads them), logs and
progress to stderr; an error is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import sys

import click


class CliError(click.ClickException):
    """A user-facing failure: printed as one line, exit status 1."""

    def show(self, file: object = None) -> None:
        click.echo(f"vitals: error: {self.format_message()}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vitals")
def main() -> None:
    """vitals: real-time customer health scores on Kafka."""


def _register() -> None:
    """Attach sub-commands; each import is local so a missing optional part
    never breaks the whole command line."""
    import importlib

    for module_name, attr in [
        ("service.cli_kafka", "kafka"),
        ("service.cli_worker", "worker"),
        ("service.cli_replay", "replay"),
        ("service.cli_scorecard", "scorecard"),
        ("service.cli_playbooks", "playbooks"),
        ("service.cli_simulate", "simulate"),
        ("service.cli_db", "db"),
        ("service.cli_history", "history_sink"),
    ]:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        main.add_command(getattr(module, attr))


_register()


def run() -> None:
    """Entry point that turns unexpected exceptions into one clear line."""
    try:
        main(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run()
