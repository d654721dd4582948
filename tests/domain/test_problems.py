"""The user error codes: one enum, documented in docs/api.md member by member."""

from __future__ import annotations

import re
from pathlib import Path

from api.domain.problems import UserErrorCode

ROOT = Path(__file__).parents[2]


def test_every_code_is_documented_with_its_meaning() -> None:
    source = (ROOT / "api" / "domain" / "problems.py").read_text(encoding="utf-8")
    meanings = dict(re.findall(r'^\s+([A-Z_]+) = "[A-Z_]+"  # (.+)$', source, re.M))
    assert set(meanings) == {code.name for code in UserErrorCode}
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for code in UserErrorCode:
        assert f"| `{code.value}` | {meanings[code.name]} |" in api, code


def test_no_code_is_spelled_as_a_string_outside_the_enum() -> None:
    literal = re.compile('"(' + "|".join(code.value for code in UserErrorCode) + ')"')
    for path in (ROOT / "api").rglob("*.py"):
        if path.name == "problems.py":
            continue
        # Members of other enums (EventKind.REFUND_FAILED, AuditAction...) share a spelling.
        lines = path.read_text(encoding="utf-8").splitlines()
        code_lines = [line for line in lines if not re.match(r'^\s+[A-Z_]+ = "[A-Z_]+"', line)]
        found = literal.findall("\n".join(code_lines))
        assert not found, f"{path.relative_to(ROOT)} spells {found}: use UserErrorCode"
