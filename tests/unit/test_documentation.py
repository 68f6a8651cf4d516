"""The README is the user's manual: every setting and every command must be in it."""

from __future__ import annotations

from pathlib import Path

import typer

from keepers.cli import app
from keepers.settings import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def command_paths(group, prefix: str = "keepers") -> list[str]:
    if hasattr(group, "commands"):
        return [
            path
            for name, sub in group.commands.items()
            for path in command_paths(sub, f"{prefix} {name}")
        ]
    return [prefix]


def test_every_setting_is_documented_as_an_environment_variable():
    missing = [name for name in Settings.model_fields if f"KEEPERS_{name.upper()}" not in README]
    assert missing == []


def test_every_cli_command_is_documented():
    paths = command_paths(typer.main.get_command(app))
    assert len(paths) >= 9
    missing = [path for path in paths if f"`{path}" not in README]
    assert missing == []


def test_every_cli_option_is_documented():
    def options(command, prefix: str) -> list[tuple[str, str]]:
        if hasattr(command, "commands"):
            return [
                pair
                for name, sub in command.commands.items()
                for pair in options(sub, f"{prefix} {name}")
            ]
        return [
            (prefix, opt)
            for param in command.params
            if getattr(param, "param_type_name", "") == "option"
            for opt in param.opts
            if opt.startswith("--") and opt != "--help"
        ]

    missing = [
        f"{cmd} {opt}"
        for cmd, opt in options(typer.main.get_command(app), "keepers")
        if opt not in README
    ]
    assert missing == []


def test_every_report_is_documented() -> None:
    from keepers.services.analytics import REPORTS

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [name for name in REPORTS if f"`{name}`" not in readme]
    assert not missing, f"reports missing from the README: {missing}"
