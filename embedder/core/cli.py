"""One vocabulary for the six command lines: the same flag, name and meaning for the same concept
everywhere, help and a default on every flag, `EMBEDDER_*` environment variables for what a
deployment sets once, `--json` where a command reports, and names that are not found answered
with what exists (the closest first).

    EMBEDDER_REPO    the model repository (--repo; default models)
    EMBEDDER_SERVER  the server a client calls (--server; default 127.0.0.1:50051)
    EMBEDDER_TOKEN   the bearer token (--token), kept off argv where `ps` would show it
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import warnings
from pathlib import Path

REPO, SERVER, TOKEN = "EMBEDDER_REPO", "EMBEDDER_SERVER", "EMBEDDER_TOKEN"


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default in its help (unless the help says it, or there is none to say);
    descriptions and examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == ""
            or (default is argparse.SUPPRESS)
        ):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


def parser(prog: str, description: str, examples: str = "") -> argparse.ArgumentParser:
    epilog = f"examples:\n{examples.rstrip()}" if examples else None
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=Formatter)  # fmt: skip
    p.examples = examples
    return p


def subcommands(p: argparse.ArgumentParser):
    """The sub-command set of `p`; each `command` in it shows its own lines of p's examples."""
    sub = p.add_subparsers(dest="command", required=True)
    sub.examples = getattr(p, "examples", "")
    return sub


def command(sub, name: str, help: str, examples: str = "") -> argparse.ArgumentParser:
    """A sub-command with the same formatting, its help, and an examples epilog: the lines of
    `examples` (the whole tool's, usually) that run this sub-command, with any `VAR=` lines."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=Formatter)
    examples = examples or getattr(sub, "examples", "")
    mine = [c for c in _logical_lines(examples) if re.search(rf"{p.prog}(\s|$)", c)]
    if mine:
        setup = [c for c in _logical_lines(examples) if re.match(r"\s*[A-Z_]+=\S+\s*$", c)]
        p.epilog = "examples:\n" + "\n".join(setup + mine)
    return p


def _logical_lines(text: str) -> list[str]:
    """Lines with their backslash continuations attached."""
    out: list[str] = []
    for line in text.rstrip().splitlines():
        if out and out[-1].endswith("\\"):
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def add_repo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", type=Path, default=Path(os.environ.get(REPO, "models")),
                   help=f"model repository folder (env {REPO})")  # fmt: skip


def add_model(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="a model's name in the repository")
    p.add_argument("--version", default="", help="its version (default: the highest)")


def add_server(p: argparse.ArgumentParser) -> None:
    """Where a client reaches embedder-serve, and how: token, TLS."""
    p.add_argument("--server", default=os.environ.get(SERVER, "127.0.0.1:50051"),
                   help=f"embedder-serve's gRPC address, HOST:PORT (env {SERVER})")  # fmt: skip
    add_token(p)
    p.add_argument("--root-cert", type=Path,
                   help="PEM CA certificate: connect with TLS, trusting it")  # fmt: skip


def add_token(p: argparse.ArgumentParser, help: str = "the bearer token to send") -> None:
    """--token, read from the environment when not given (never shown as a default)."""
    p.add_argument("--token", help=f"{help} (env {TOKEN}; on the command line `ps` shows it)")


def token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get(TOKEN) or None


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def read_root_cert(path: Path | None) -> bytes | None:
    return path.read_bytes() if path else None


def deprecated(old: str, new: str) -> argparse.Action:
    """An action for a renamed flag: still taken for one release, with a warning."""

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
            print(f"{parser.prog}: warning: {old} is deprecated; use {new}", file=sys.stderr)
            setattr(namespace, self.dest, values)

    return Renamed


def closest(name: str, known: list[str]) -> str:
    """`known` for an error message, the names nearest `name` first."""
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    rest = [k for k in known if k not in near]
    return ", ".join([*(f"{n} (closest)" if i == 0 else n for i, n in enumerate(near)), *rest])
