"""`--help` of every command shows its defaults and an example; `vlalign --version`; the top-level description."""

from __future__ import annotations

import argparse

import pytest

from vlalign import __version__
from vlalign.cli import build_parser, main
from vlalign.commands.experiment import EXPERIMENTS, SUMMARIES


def sub_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (nested) sub-command parser by its command words."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found[prefix + (name,)] = child
                found.update(sub_parsers(child, prefix + (name,)))
    return found


COMMANDS = sorted(sub_parsers(build_parser()))


def help_text(capsys, words: tuple[str, ...]) -> str:
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_every_command_help_has_an_example_and_its_defaults(capsys, words):
    text = help_text(capsys, words)
    assert "example" in text
    example_lines = [line.strip() for line in text.split("example", 1)[1].splitlines()[1:] if line.strip()]
    assert example_lines and all(line.startswith(f"vlalign {words[0]}") for line in example_lines), example_lines
    parser = sub_parsers(build_parser())[words]
    for action in parser._actions:
        default = action.default
        if not action.option_strings or default in (None, argparse.SUPPRESS) or default is False:
            continue
        assert action.help, f"{' '.join(words)} {action.option_strings[0]} has no help text"
        assert f"(default: {default})" in " ".join(text.split()), (words, action.option_strings, default)


def test_experiment_help_lists_every_experiment_with_a_line(capsys):
    text = help_text(capsys, ("experiment",))
    assert set(SUMMARIES) == set(EXPERIMENTS)
    for name, summary in SUMMARIES.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert summary[:40] in line


def test_unknown_experiment_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "typograhpic", "--out", "x"])
    assert "invalid choice: 'typograhpic'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"vlalign {__version__}, torch ") and "transformers" in out


def test_top_level_help_speaks_to_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "written words" in text and "vlalign demo --out runs/demo" in text
    for words in COMMANDS:
        if len(words) == 1:
            assert words[0] in text
