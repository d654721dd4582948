"""Reading the parts of a doc that its doc test holds to the code.

A doc marks a table or a code block with ``<!-- doc-test: NAME -->`` on the line
before it; the test reads that part by its name.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


class MarkedDoc:
    def __init__(self, name: str) -> None:
        self.name = f"docs/{name}"
        self.text = (ROOT / "docs" / name).read_text(encoding="utf-8")

    def after_marker(self, marker_name: str) -> str:
        marker = f"<!-- doc-test: {marker_name} -->\n"
        assert self.text.count(marker) == 1, f"{self.name} needs exactly one {marker.strip()}"
        return self.text.split(marker, 1)[1]

    def code_block(self, marker_name: str) -> str:
        """The fenced code block right after the marker ``marker_name``."""
        found = re.match(r"```[a-z]*\n(.*?)^```$", self.after_marker(marker_name), re.S | re.M)
        assert found, f"no code block right after the marker {marker_name!r}"
        return found.group(1)

    def table(self, marker_name: str) -> list[list[str]]:
        """The body rows of the table right after the marker, cell by cell."""
        lines = self.after_marker(marker_name).split("\n\n", 1)[0].splitlines()
        assert len(lines) > 2 and lines[0].startswith("|"), f"no table right after {marker_name!r}"
        return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def unquoted(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), cell
    return cell.strip("`")
