"""How plugins.toml problems are worded: table paths, and TOML syntax errors.

Every problem names the file and the table as the file writes it
(``[branches.zj.providers.alipay]``); a syntax error from ``tomllib`` is
reworded to say where it is and, for a table declared twice, which branch or
provider it is.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_TOML_REDECLARED = re.compile(r"Cannot declare (\(.*\)) twice")
_TOML_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?")


def table_path(*keys: str) -> str:
    """``[branches.zj.providers.alipay]``, quoting keys that TOML cannot write bare."""
    parts = [key if _BARE_KEY.match(key) else '"' + key.replace('"', '\\"') + '"' for key in keys]
    return "[" + ".".join(parts) + "]"


def syntax_problem(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> str:
    """One problem line for a TOML syntax error in ``text`` (the content of ``path``)."""
    reason = str(exc)
    position = _TOML_POSITION.search(reason)
    line = int(position.group(1)) if position else None
    where = f"line {position.group(1)}, column {position.group(2)}" if position else ""
    bare_reason = _TOML_POSITION.sub("", reason).strip()
    redeclared = _TOML_REDECLARED.search(reason)
    if redeclared:
        keys = _literal_keys(redeclared.group(1))
        if keys is not None:
            table = table_path(*keys)
            if len(keys) == 2 and keys[0] == "branches":
                what = f"duplicate branch {keys[1]!r}"
            elif len(keys) == 4 and keys[0] == "branches" and keys[2] == "providers":
                what = f"duplicate provider {keys[3]!r} in branch {keys[1]!r}"
            else:
                what = "duplicate table"
            return f"{path}: {table} {what}: declared a second time at {where}"
    if bare_reason == "Cannot overwrite a value":
        bare_reason = "a key is given twice"
    header = _table_before(text, line) if line is not None else None
    located = f" {header}" if header else ""
    at = f" at {where}" if where else ""
    return f"{path}:{located} TOML syntax error{at}: {bare_reason}"


def _literal_keys(rendered: str) -> tuple[str, ...] | None:
    try:
        keys = ast.literal_eval(rendered)
    except (ValueError, SyntaxError):
        return None
    if isinstance(keys, tuple) and all(isinstance(key, str) for key in keys):
        return keys
    return None


def _table_before(text: str, line: int) -> str | None:
    """The header of the table the given 1-based line belongs to, as written."""
    for candidate in reversed(text.splitlines()[: max(line - 1, 0)]):
        header = _TOML_HEADER.match(candidate)
        if header:
            return f"[{header.group(1)}]"
    return None
