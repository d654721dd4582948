"""schema.graphql is the printed schema, and `branchpay schema export` writes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from api.schema import schema

ROOT = Path(__file__).resolve().parents[2]


def test_schema_file_matches_the_code() -> None:
    on_disk = (ROOT / "schema.graphql").read_text(encoding="utf-8")
    assert on_disk == schema.as_str() + "\n", (
        "schema.graphql drifted from the code: run `branchpay schema export`"
    )


def test_schema_export_writes_the_sdl(tmp_path: Path) -> None:
    target = tmp_path / "schema.graphql"
    subprocess.run(
        [sys.executable, "-m", "api", "schema", "export", "--output", str(target)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    assert target.read_text(encoding="utf-8") == (ROOT / "schema.graphql").read_text(
        encoding="utf-8"
    )
