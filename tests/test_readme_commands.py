"""The docs cannot drift from the flags: every command line in the README's blocks and in each
CLI's examples epilog is parsed by that CLI's own parser; every flag has help; the README keeps
its two commands, the ones CI and newcomers run."""

from __future__ import annotations

import argparse
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from embedder.client.cli import build_parser as client
    from embedder.demo import build_parser as demo
    from embedder.features.cli import build_parser as features
    from embedder.serving.cli import serve_parser
    from export.cli import build_parser as export
    from heads.cli import build_parser as heads

    return {
        "embedder-client": client(),
        "embedder-demo": demo(),
        "embedder-export": export(),
        "embedder-features": features(),
        "embedder-heads": heads(),
        "embedder-serve": serve_parser(),
    }


PARSERS = _parsers()


def _command_lines(text: str) -> list[str]:
    """Shell lines of a block, continuations joined, split at `&&`, `;`, `|` and a trailing `&`."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "|", "&", "||"):
                if command:
                    lines.append(command)
                command = []
            else:
                command.append(word)
    return [c for c in lines if c]


def _cli_calls(text: str) -> list[tuple[str, list[str]]]:
    calls = []
    for words in _command_lines(text):
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value prefix
            words = words[1:]
        if words and Path(words[0]).name in PARSERS:
            calls.append((Path(words[0]).name, words[1:]))
    return calls


def _readme_blocks(language: set[str]) -> list[str]:
    return [body for lang, body in BLOCK.findall(README) if lang in language]


README_CALLS = [call for b in _readme_blocks({"", "bash", "sh"}) for call in _cli_calls(b)]
EPILOG_CALLS = [
    (prog, argv)
    for parser in PARSERS.values()
    for sub in [
        parser,
        *(
            p
            for a in parser._actions
            if isinstance(a, argparse._SubParsersAction)
            for p in a.choices.values()
        ),
    ]  # fmt: skip
    for prog, argv in _cli_calls(sub.epilog or "")
]


def _id(call) -> str:
    return " ".join([call[0], *call[1]])[:60]


def test_the_readme_shows_every_cli():
    assert {prog for prog, _ in README_CALLS} == set(PARSERS)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(PARSERS)


@pytest.mark.parametrize("call", README_CALLS + EPILOG_CALLS, ids=_id)
def test_each_documented_command_parses(call, capsys):
    prog, argv = call
    try:
        PARSERS[prog].parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{prog} {shlex.join(argv)}: {exc.code}\n{capsys.readouterr().err}")


def test_the_python_blocks_compile():
    blocks = _readme_blocks({"python"})
    assert len(blocks) >= 4
    for block in blocks:
        compile(block, "README.md", "exec")


def _all_parsers():
    for prog, parser in PARSERS.items():
        yield prog, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from ((f"{prog} {name}", p) for name, p in action.choices.items())


@pytest.mark.parametrize("prog,parser", list(_all_parsers()), ids=lambda v: str(v)[:30])
def test_every_flag_has_help_and_every_command_examples(prog, parser):
    from embedder.core.cli import Formatter

    assert parser.formatter_class is Formatter, prog
    undocumented = [
        a.option_strings or a.dest
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help
    ]
    assert not undocumented, f"{prog}: no help for {undocumented}"
    assert "examples:" in (parser.epilog or ""), f"{prog} has no examples"


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    blocks = _readme_blocks({"bash", "sh"})
    main_job, tests = (block.strip() for block in blocks)
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()
    assert "embedder-demo" in main_job and "pytest" in tests


def test_readme_is_a_guide_not_a_lab_notebook():
    assert len(README.splitlines()) <= 300
