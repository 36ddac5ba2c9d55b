"""``scripts/bursts``: the burst scenario (``pubtasks bench --entries N``) for 100, 1,000
and 10,000 entries, and the "Bursts" section of docs/performance.md from its figures.

Each case runs ``pubtasks bench --json --entries N`` as a subprocess, so that
``--before REV`` can run the same scenario on an earlier commit (a git worktree put
first on ``PYTHONPATH``: the worker it starts imports that tree's pubtasks). The
figures go to ``docs/bursts.json`` (this tree) or ``docs/bursts-before.json``;
``--render`` only writes the section again from those two files (``scripts/performance``
does, after it rewrites the rest of the page).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: (entries, period s, bursts measured): the issue's table.
CASES = ((100, 10.0, 3), (1000, 10.0, 3), (10_000, 15.0, 2))
BEGIN, END = "<!-- bursts: scripts/bursts writes this section -->", "<!-- /bursts -->"
DOCS = Path("docs")


def measure(python_path: str | None) -> list[dict[str, Any]]:
    """Each case's ``burst`` figures, on this tree or on the tree at ``python_path``."""
    env = dict(os.environ)
    if python_path:
        env["PYTHONPATH"] = python_path
    pubtasks = str(Path(sys.executable).with_name("pubtasks"))
    rows = []
    for entries, period, bursts in CASES:
        args = [pubtasks, "bench", "--json", "--entries", str(entries)]
        args += ["--period", f"{period:g}", "--bursts", str(bursts)]
        print(f"bursts: {' '.join(args[1:])}", file=sys.stderr, flush=True)
        out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.splitlines()[-1])["burst"])
    return rows


def worktree(rev: str) -> Path:
    """A checkout of ``rev`` beside this one (``git worktree``), to run its code."""
    where = Path(tempfile.mkdtemp(prefix="pubtasks-before-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], check=True)
    return where


def cell(row: dict[str, Any] | None, key: str, unit: str = "") -> str:
    if row is None or row.get(key) is None:
        return "-"
    value = row[key]
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(f"{v:g}{unit}" if v is not None else "-" for v in value)
    return f"{value:g}{unit}" if isinstance(value, int | float) else str(value)


def section(before: list[dict[str, Any]], after: list[dict[str, Any]], rev: str) -> str:
    """The section's markdown: each case before and after, side by side."""
    by_entries = {r["entries"]: r for r in before}
    lines = [
        BEGIN,
        "## Bursts: many entries due at the same instant",
        "",
        "Produced by `scripts/bursts` (`pubtasks bench --entries N --period P --bursts K` for",
        f"each row, on this tree and, before, on commit {rev}); do not edit by hand. Every",
        "entry is `every(P)`, so all fall due at the same instants; one worker `-B` at its",
        "default concurrency. What RabbitMQ's queue received is timed and counted (a",
        "consumer beside the run); the limit is the same broker's confirmed rate for one",
        "pubtasks tick of N messages.",
        "",
        "| entries | P | run | delivered / due | last of each burst after its time | p50 "
        "| p99 | burst rate, msgs/s | limit, msgs/s | counters = received |",
        "|---:|---:|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in after:
        old = by_entries.get(row["entries"])
        for label, r in (("before", old), ("after", row)):
            if r is None:
                continue
            lines.append(
                f"| {r['entries']:,} | {r['period']:g} s | {label} "
                f"| {r['delivered']} / {r['expected']} "
                f"| {cell(r, 'last_lateness_s', ' s')} | {cell(r, 'p50_s', ' s')} "
                f"| {cell(r, 'p99_s', ' s')} | {cell(r, 'burst_msgs_per_s')} "
                f"| {cell(r, 'raw_confirmed_msgs_per_s')} | {cell(r, 'counters_equal_received')} |"
            )
    lines += [
        "",
        "With the most entries, after:",
        "",
        "| measure | value | target |",
        "|---|---:|---|",
    ]
    big = after[-1]
    lines += [
        f"| beat going on with its entries, from the worker's start | "
        f"{cell(big, 'beat_start_s', ' s')} | <= 2 s |",
        f"| RSS of all the worker's processes | {cell(big, 'rss_mib', ' MiB')} | <= 300 MiB |",
        f"| `pubtasks stats` answers in (halfway between bursts) | "
        f"{cell(big, 'stats_s', ' s')} | <= 1 s |",
        f"| `pubtasks schedule list` answers in (halfway between bursts) | "
        f"{cell(big, 'list_s', ' s')} | <= 1 s |",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def render(page: Path, before: Path, after: Path) -> None:
    """Put the section into ``page`` (in place of the one there, or at its end)."""
    old: dict[str, Any] = {"rows": [], "rev": "-"}
    if before.exists():
        old = json.loads(before.read_text())
    new: dict[str, Any] = json.loads(after.read_text())
    text = page.read_text()
    part = section(old["rows"], new["rows"], old["rev"])
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + part + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + part
    page.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bursts", description=__doc__.split("\n")[0])
    parser.add_argument("--before", metavar="REV", help="measure commit REV instead")
    parser.add_argument("--render", action="store_true", help="only write the section")
    args = parser.parse_args(argv)
    before, after = DOCS / "bursts-before.json", DOCS / "bursts.json"
    if not args.render:
        if args.before:
            tree = worktree(args.before)
            try:
                rows = measure(str(tree))
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=False)
            before.write_text(json.dumps({"rev": args.before, "rows": rows}, indent=2) + "\n")
        else:
            after.write_text(json.dumps({"rows": measure(None)}, indent=2) + "\n")
    if after.exists():
        render(DOCS / "performance.md", before, after)
        print("wrote docs/performance.md's bursts section", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
