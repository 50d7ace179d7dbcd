"""The README says what the repository does: CI runs its test command, and its list of commands
is the list of top-level modules that are commands."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readmes_test_command():
    command = next(line for line in README.splitlines() if "-m pytest" in line)
    assert command == "python -m pytest -q tests"
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_readmes_commands_are_the_modules_that_run_as_commands():
    listed = re.search(r"The top-level modules that are also commands(.*?)the others", README, re.S)
    assert listed, "README: the list of top-level commands"
    named = set(re.findall(r"`(\w+\.py)`", listed.group(1)))
    commands = {p.name for p in ROOT.glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}
    assert named == commands
