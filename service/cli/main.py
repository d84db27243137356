"""The ``vitals`` command line.

Every sub-command lives in the module of its concept and is loaded lazily
from the table below, so ``vitals --help`` stays fast and a sub-command module
may import ``CliError`` from here without a cycle.

Contract: results go to stdout (JSON lines where a program reads them), logs and
progress to stderr; an error is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from service.runtime.settings import Settings

#: command name -> (module, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "kafka": ("service.cli.kafka", "kafka"),
    "worker": ("service.cli.worker", "worker"),
    "replay": ("service.cli.replay", "replay"),
    "backtest": ("service.cli.backtest", "backtest"),
    "scorecard": ("service.cli.scorecard", "scorecard"),
    "playbooks": ("service.cli.playbooks", "playbooks"),
    "simulate": ("service.cli.simulate", "simulate"),
    "db": ("service.cli.db", "db"),
    "history-sink": ("service.cli.history_sink", "history_sink"),
    "demo": ("service.cli.demo", "demo"),
    "bench": ("service.cli.bench", "bench"),
}


class CliError(click.ClickException):
    """A user-facing failure: printed as one line, exit status 1."""

    def show(self, file: object = None) -> None:
        click.echo(f"vitals: error: {self.format_message()}", err=True)


def settings_from_options(**options: object) -> Settings:
    """Settings from the environment, overridden by the options given (None = not given).

    An invalid value is a ``CliError`` naming the setting, not a traceback.
    """
    from pydantic import ValidationError

    from service.runtime.settings import load_settings

    overrides = {key: value for key, value in options.items() if value is not None}
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        # pydantic prefixes the message of a plain ValueError with "Value error, ".
        message = first["msg"].removeprefix("Value error, ")
        location = ".".join(map(str, first["loc"]))
        if not location:  # a rule across settings (e.g. SASL needs a user name)
            raise CliError(f"invalid settings: {message}") from exc
        name = f"VITALS_{location.upper()}"
        raise CliError(f"invalid setting {name} ({location}): {message}") from exc


class LazyGroup(click.Group):
    """A group whose sub-commands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # not built (yet): hide it
                return None
            raise
        command: click.Command = getattr(module, attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vitals")
def main() -> None:
    """vitals: real-time customer health scores on Kafka."""
    # Client libraries log connection retries as errors; a command reports
    # the failure itself in one line. `vitals worker` turns them back on.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def run() -> None:
    """Entry point: Ctrl-C exits 130 without a traceback."""
    try:
        main(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run()
