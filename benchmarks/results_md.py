"""benchmarks/RESULTS.md: each benchmark owns one section between its own start and end markers."""
from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Replace the text between `start` and `end` (the markers included; `section` carries them) or append it."""
    text = path.read_text() if path.is_file() else "# Benchmark results\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
