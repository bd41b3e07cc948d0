"""Every `landcover ...` command the README and docs/ show is parsed by the real argument parser, so a renamed or
removed flag fails here rather than in a reader's terminal."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest
from conftest import ROOT

from landcover.cli import build_parser

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands(text: str) -> list[str]:
    """The landcover commands in a page's code blocks: continuation lines joined, comments dropped, `torchrun ...
    -m landcover` and `python -m landcover` read as landcover."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "landcover" in words and (words[0] == "landcover" or words[words.index("landcover") - 1] == "-m"):
                commands.append(shlex.join(words[words.index("landcover") + 1:]))
    return commands


def inline_commands(text: str) -> list[str]:
    """`landcover COMMAND --flag ...` spans in prose: often fragments (a flag shown in context), so only their
    command and flags are checked."""
    return [span[len("landcover "):] for span in re.findall(r"`(landcover [a-z-]+[^`]*)`", text)]


def parse(command: str) -> None:
    parser = build_parser()
    parser.exit_on_error = False
    try:
        parser.parse_args(shlex.split(command))
    except SystemExit as exc:  # argparse reports most errors by exiting
        pytest.fail(f"`landcover {command}` does not parse (exit {exc.code})")
    except argparse.ArgumentError as exc:
        pytest.fail(f"`landcover {command}`: {exc}")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


CASES = [(page.relative_to(ROOT).as_posix(), command) for page in PAGES
         for command in shown_commands(page.read_text())]


def test_the_pages_show_commands():
    pages = {page for page, _ in CASES}
    assert "README.md" in pages and len(pages) >= 8 and len(CASES) >= 40


@pytest.mark.parametrize(("page", "command"), CASES, ids=[f"{p}:{c[:40]}" for p, c in CASES])
def test_shown_command_parses(page, command):
    parse(command)


def test_inline_commands_name_real_commands_and_flags():
    commands = subcommands()
    wrong = []
    for page in PAGES:
        for span in inline_commands(page.read_text()):
            name, *rest = span.split()
            if name not in commands:
                wrong.append(f"{page.name}: landcover {name}")
                continue
            flags = {s for a in commands[name]._actions for s in a.option_strings}
            wrong += [f"{page.name}: landcover {name} {w}" for w in rest
                      if w.startswith("--") and w.split("=")[0] not in flags]
    assert not wrong


def test_a_renamed_flag_is_caught():
    """The check itself: a flag that does not exist fails to parse."""
    with pytest.raises(pytest.fail.Exception):
        parse("predict runs/b/bundle --image a.tif --out m.tif --strides 240m")
