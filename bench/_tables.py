"""A benchmark's Markdown table: printed row by row as it is measured, then written to
``bench/out/NAME.md`` under a title."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def table_report(name: str, title: str, header: list[str], rows: Iterable[str]) -> None:
    """Print ``header``, then each row as ``rows`` yields it; write them all to
    ``bench/out/{name}.md`` under ``## {title}``."""
    print("\n".join(header), flush=True)
    written = []
    for row in rows:
        print(row, flush=True)
        written.append(row)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.md").write_text(f"## {title}\n\n" + "\n".join([*header, *written]) + "\n")
