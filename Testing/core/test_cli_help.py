"""Every option of every ``kneeseg`` command says in ``--help`` what it does and what its default is."""

import argparse

import pytest

from kneeseg import cli


def _parsers(parser, name="kneeseg"):
    """(name, parser) of the command line and of every subcommand, at any depth."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _options(parser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        yield action


PARSERS = list(_parsers(cli.build_parser()))


def test_the_walk_reaches_every_subcommand():
    names = [name for name, _ in PARSERS]
    assert {"kneeseg segment", "kneeseg train", "kneeseg evaluate", "kneeseg info", "kneeseg synth prepare",
            "kneeseg synth sheet", "kneeseg overlay"} <= set(names)


@pytest.mark.parametrize("name, parser", PARSERS, ids=[name for name, _ in PARSERS])
def test_every_option_says_what_it_does_and_its_default(name, parser):
    formatter = parser._get_formatter()
    one_of = {a for group in parser._mutually_exclusive_groups if group.required for a in group._group_actions}
    problems = []
    for action in _options(parser):
        label = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            problems.append(f"{label}: no help text")
            continue
        text = formatter._expand_help(action)
        takes_value = action.nargs != 0
        optional = bool(action.option_strings) and not action.required and action not in one_of
        if not any(action.default is unset for unset in (None, False, argparse.SUPPRESS)) and takes_value:
            shown = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else str(action.default)
            if shown not in text:
                problems.append(f"{label}: default {action.default!r} not shown in {text!r}")
        elif takes_value and optional and "default" not in text.lower():
            problems.append(f"{label}: says nothing of what happens without it ('default: ...'): {text!r}")
    assert not problems, f"{name}: " + "; ".join(problems)


def test_help_renders_for_every_command(capsys):
    for name, parser in PARSERS:
        text = parser.format_help()
        assert "%(" not in text and "None" not in text.replace("--no-", ""), name
