"""The documentation's generated pages: the scenario reference (from the models), the
CLI reference (from the parser) and the site's front page (from the README). ``make
docs`` writes them; ``tests/docs/test_docs.py`` checks the committed ones are current.
(The "why answers differ" page runs simulations: :mod:`comem.why`, ``make why``.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: help text is wrapped at this width, whatever the terminal
WIDTH = 100


def scenario_page() -> str:
    from sim.reference import README_BEGIN, README_END, render_markdown

    return (
        "# Scenario reference\n\n"
        "Every field of a scenario file (`--set PATH=VALUE` overrides any; `[]` is a list\n"
        "entry, e.g. `architectures.1.k`). Generated from the models by\n"
        "`sim.reference.render_markdown` (the same content as `comem run --help-fields`\n"
        "prints).\n\n" + README_BEGIN + "\n" + render_markdown() + README_END + "\n"
    )


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                out.append(command)
                out.extend(_commands(command))
    return out


def cli_page() -> str:
    from comem.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        parser = build_parser()
        parts = [
            "# CLI reference\n",
            "Every command's `--help`, generated from the parser (`make docs`).\n",
            f"```text\n{parser.format_help()}```\n",
        ]
        for command in _commands(parser):
            parts.append(f"## {command.prog}\n\n```text\n{command.format_help()}```\n")
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


def index_page() -> str:
    """The README, its links made relative to docs/."""
    text = (ROOT / "README.md").read_text()
    return text.replace("](docs/", "](")


PAGES = {
    "reference/scenario.md": scenario_page,
    "reference/cli.md": cli_page,
    "index.md": index_page,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comem.docs_gen", description=__doc__)
    parser.add_argument("--docs", default=str(DOCS), help="the docs directory [docs/]")
    args = parser.parse_args(argv)
    for name, page in PAGES.items():
        path = Path(args.docs) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page())
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
