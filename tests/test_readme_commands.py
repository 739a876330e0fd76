"""Every command of the `conceptgen` parser is documented in README.md (its Commands table
or examples): the code and its documentation are twins."""
from __future__ import annotations

import argparse
from pathlib import Path

from conceptgen.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every (sub)command as a word path, e.g. ("tcav",), ("user", "add"), from the parser itself."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(prefix + (name,))
                out += command_paths(sub, prefix + (name,))
    return out


def undocumented(paths: list[tuple[str, ...]], readme: str) -> list[str]:
    """Commands whose README line is missing: ``conceptgen NAME`` for a command, and a line
    with ``conceptgen NAME`` and the sub-command's word for a sub-command (``user add``)."""
    lines = readme.splitlines()
    missing = []
    for path in paths:
        head = f"conceptgen {path[0]}"
        documented = [line for line in lines if f"`{head}" in line or line.lstrip().startswith(head)]
        if not documented or (len(path) > 1 and not any(path[-1] in line for line in documented)):
            missing.append(" ".join(path))
    return missing


def test_every_cli_command_appears_in_the_readme():
    paths = command_paths(build_parser())
    assert ("tcav",) in paths and ("user", "add") in paths and ("db", "upgrade") in paths
    assert undocumented(paths, README.read_text()) == []


def test_a_command_missing_from_the_readme_is_reported():
    readme = "| `conceptgen user add NAME` | accounts |\n| `conceptgen verify DIR` | checksums |\n"
    assert undocumented([("user", "add"), ("user", "list"), ("verify",), ("tcav",)], readme) == ["user list", "tcav"]
