"""Every ``facerec`` subcommand's ``--help`` shows the choices and the default of each option."""

from __future__ import annotations

import argparse

import pytest

from server.__main__ import build_parser

SUBCOMMANDS = ("serve", "config", "compare", "token", "models")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_is_listed_in_the_top_level_help() -> None:
    text = build_parser().format_help()
    assert set(_subparsers()) == set(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        assert name in text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_options_show_defaults_and_choices(name: str) -> None:
    parser = _subparsers()[name]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        assert action.help, f"{name} {action.option_strings[0]} has no help text"
        if action.choices:
            assert "{" + ",".join(action.choices) + "}" in text, action.option_strings
        if isinstance(action, argparse._StoreTrueAction) or action.required:
            continue
        help_text = " ".join((action.help % {"default": action.default}).split())
        assert "default" in help_text or action.default is not None, action.option_strings
        if action.default is not None:
            assert f"(default: {action.default})" in text, action.option_strings
