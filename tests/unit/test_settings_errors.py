"""An invalid setting is one line naming it (service/cli/main.py)."""

from __future__ import annotations

import pytest

from service.cli.main import CliError, settings_from_options


def test_a_rule_across_settings_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITALS_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.delenv("VITALS_SASL_USERNAME", raising=False)
    monkeypatch.delenv("VITALS_SASL_PASSWORD", raising=False)
    with pytest.raises(CliError) as info:
        settings_from_options()
    assert info.value.format_message() == (
        "invalid settings: VITALS_SASL_USERNAME and VITALS_SASL_PASSWORD are required "
        "with security_protocol=SASL_SSL"
    )


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITALS_SHUTDOWN_GRACE_S", "0")
    with pytest.raises(CliError) as info:
        settings_from_options()
    assert info.value.format_message() == (
        "invalid setting VITALS_SHUTDOWN_GRACE_S (shutdown_grace_s): Input should be greater than 0"
    )
