"""Unit tests: the code in README.md and in the hand-written pages of docs/.

Every ``python`` block compiles; every block that is a ``celeryconfig.py`` loads
through ``Settings.load`` (which reads and checks, and connects to nothing); every
``pubtasks`` command line of a shell block parses with the command's own parser; every
relative link points to a file that exists, and its ``#anchor`` to a heading there; and
the README stays a front door: at most 350 lines, with an entry of one's own in its
first 120. A block preceded by ``<!-- not a whole config -->`` is only compiled.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pubtasks import defaults
from pubtasks.cli import parser
from pubtasks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: Pages written by scripts, not by hand: scripts/reliability and scripts/performance.
GENERATED = {"reliability.md", "performance.md"}
#: The hand-written pages the README leads to.
PAGES = {"configuration.md", "schedule.md", "operations.md", "cluster.md", "architecture.md"}
#: Marks a python block that is deliberately not a whole celeryconfig.py.
PARTIAL = "<!-- not a whole config -->"
SHELLS = {"sh", "bash", "console", "shell"}
#: How a pubtasks command line may start in a shell block (after an optional "$ ").
COMMANDS = ("pubtasks ", "python -m pubtasks ", ".venv/bin/pubtasks ")
ENV = {"AMQP_URL": "amqp://guest:guest@127.0.0.1:5672//", "REDIS_URL": "redis://127.0.0.1:6379/0"}
README_MAX_LINES = 350
FIRST_LINES = 120


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page: its language, text, first line and whether it
    is marked as not a whole config."""

    page: Path
    language: str
    text: str
    line: int
    partial: bool

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def hand_written() -> list[Path]:
    return [README, *sorted(p for p in DOCS.glob("*.md") if p.name not in GENERATED)]


def every_page() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().rpartition("\n")[2].strip()
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(page, match.group(1), match.group(2), line, before == PARTIAL))
    return found


def all_blocks(language: set[str]) -> list[Block]:
    return [b for page in hand_written() for b in blocks(page) if b.language in language]


def without_code(text: str) -> str:
    return FENCE.sub("", text)


def assigned(code: str) -> set[str]:
    """The names a block assigns at its top level."""
    names: set[str] = set()
    for node in ast.parse(code).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def is_config(block: Block) -> bool:
    """A block that defines ``beat_schedule`` or an upper-case setting is a celeryconfig."""
    names = assigned(block.text)
    return "beat_schedule" in names or any(n.isupper() for n in names)


def run(block: Block) -> dict[str, Any]:
    """The block executed as a module: the dict a celeryconfig's names land in."""
    conf: dict[str, Any] = {}
    exec(compile(block.text, str(block), "exec"), conf)
    return conf


def load(block: Block) -> Settings:
    return Settings.load(ENV, run(block))


PYTHON = all_blocks({"python"})
CONFIGS = [b for b in PYTHON if not b.partial and is_config(b)]


def command_lines() -> list[tuple[str, str]]:
    """(where, arguments) of each pubtasks command line in a shell block (in a
    ``console`` block, the lines after a ``$`` prompt: the others are output)."""
    found = []
    for block in all_blocks(SHELLS):
        text = re.sub(r"\\\n", " ", block.text)  # continued lines are one command
        for n, raw in enumerate(text.splitlines()):
            line = raw.strip()
            if block.language == "console" and not line.startswith("$ "):
                continue
            line = line.removeprefix("$ ")
            for start in COMMANDS:
                if line.startswith(start):
                    found.append((f"{block}+{n}", line[len(start) :]))
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", without_code(page.read_text()), re.M):
        base = slug(heading)
        name, n = base, 0
        while name in found:  # GitHub numbers a repeated heading's anchor
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def links() -> list[tuple[Path, str]]:
    """(page, target) of each relative link of every page, README and docs/, once."""
    found = []
    for page in every_page():
        targets = re.findall(r"\]\(([^)\s]+)(?: \"[^\"]*\")?\)", without_code(page.read_text()))
        for target in sorted(set(targets)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                found.append((page, target))
    return found


# -- (a) every python block compiles ------------------------------------------------------


def test_the_pages_have_python_blocks_to_test() -> None:
    assert {b.page.name for b in PYTHON} >= {"README.md", "schedule.md"}
    assert len(CONFIGS) >= 7, [str(b) for b in CONFIGS]


@pytest.mark.parametrize("block", PYTHON, ids=str)
def test_every_python_block_compiles(block: Block) -> None:
    compile(block.text, str(block), "exec")


# -- (b) every celeryconfig block loads ---------------------------------------------------


@pytest.mark.parametrize("block", CONFIGS, ids=str)
def test_every_celeryconfig_block_loads_as_the_worker_loads_it(block: Block) -> None:
    settings = load(block)
    conf = run(block)
    if "beat_schedule" in conf:  # every publish entry became a recipe
        publish = [n for n, e in conf["beat_schedule"].items() if e["task"] == defaults.TASK_NAME]
        assert sorted(settings.recipes) == sorted(publish)


def test_a_python_block_that_is_neither_config_nor_marked_is_reported() -> None:
    # A python block is a whole celeryconfig, or says it is not: none is left untested
    # by accident (e.g. a config that sets only lower-case Celery settings).
    unclear = [str(b) for b in PYTHON if not b.partial and not is_config(b)]
    assert unclear == []


# -- (c) every pubtasks command line parses -----------------------------------------------


def test_the_pages_show_pubtasks_commands() -> None:
    shown = {shlex.split(args, comments=True)[0] for _, args in command_lines()}
    assert shown >= {"stats", "schedule", "health", "metrics", "bench"}


@pytest.mark.parametrize(("where", "arguments"), command_lines(), ids=str)
def test_every_pubtasks_command_line_parses(where: str, arguments: str) -> None:
    argv = shlex.split(arguments, comments=True)
    if "--help" in argv or "-h" in argv:
        pytest.skip("--help prints and exits")
    try:
        parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `pubtasks {arguments}` does not parse (exit {exc.code})")


# -- (d) every relative link resolves -----------------------------------------------------


@pytest.mark.parametrize(
    ("page", "target"), links(), ids=lambda x: x.name if isinstance(x, Path) else x
)
def test_every_relative_link_points_to_a_file_and_heading_that_exist(
    page: Path, target: str
) -> None:
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{page.relative_to(ROOT)}: {target} -> {resolved} is missing"
    if anchor and resolved.suffix == ".md":
        assert anchor in anchors(resolved), f"{page.relative_to(ROOT)}: no heading #{anchor}"


def test_the_readme_links_every_page_of_docs() -> None:
    text = README.read_text()
    for name in sorted(PAGES | GENERATED | {p.name for p in DOCS.glob("*.md")}):
        assert f"](docs/{name})" in text, name


# -- (e) the README is a front door -------------------------------------------------------


def test_the_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


def test_the_readme_shows_an_entry_of_ones_own_early() -> None:
    # Within its first lines: a whole celeryconfig.py with an entry that publishes its
    # own body and headers, with its own routing key, to an exchange it declares.
    first = [b for b in blocks(README) if b.language == "python" and b.line < FIRST_LINES]
    first = [b for b in first if b.line + b.text.count("\n") < FIRST_LINES]
    own = []
    for block in first:
        conf = run(block)
        settings = load(block)
        for name, entry in (conf.get("beat_schedule") or {}).items():
            kwargs = entry.get("kwargs") or {}
            if {"exchange", "routing_key", "body", "headers"} <= kwargs.keys():
                recipe = settings.recipes[name]
                assert recipe.exchange == kwargs["exchange"] != defaults.EXCHANGE
                assert recipe.routing_key == kwargs["routing_key"]
                assert recipe.headers == kwargs["headers"]
                assert recipe.body is not None
                own.append(name)
    assert own, (
        f"no entry with exchange, routing_key, body and headers in the first {FIRST_LINES} lines"
    )
