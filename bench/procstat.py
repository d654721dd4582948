"""CPU time and resident memory of a process and its children, read from /proc.

CPU is what the kernel charged (utime + stime), not wall time, so a busy
machine makes requests slower but does not make them look more expensive.
With ``uvicorn --workers N`` the requests are served by child processes of
the one we started: the whole tree is counted.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = (PROC / str(pid) / "stat").read_text()
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return text[text.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        children.setdefault(parent, []).append(int(entry.name))
    found = [pid]
    for current in found:
        found.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of the tree under ``pid`` so far."""
    total = 0
    for member in tree(pid):
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        # Fields 14 and 15 of /proc/PID/stat (utime, stime); we dropped the first two.
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of the tree under ``pid`` (VmRSS of each member)."""
    total = 0
    for member in tree(pid):
        try:
            status = (PROC / str(member) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    return total
