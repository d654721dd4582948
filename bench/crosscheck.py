"""An independent second opinion on scenario (a): wrk against the same API process.

With ``--wrk`` and ``wrk`` on PATH, each of (a) over GraphQL and (a) over the
plain endpoint is driven again by wrk (C, HTTP/1.1 keep-alive) with the same
connection count and duration; a Lua script picks the branch and status at
random as our generator does. Its throughput and latency percentiles go
beside ours in the JSON, so a fault in our generator shows as a disagreement.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.scenarios import ORDERS_QUERY, PAGE_SIZE, PAGE_STATUSES, Spec, Target
from bench.synthetic import BRANCHES

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
LATENCY = re.compile(r"^\s*(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
THROUGHPUT = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_list(values: tuple[str, ...]) -> str:
    return "{" + ", ".join(f'"{value}"' for value in values) + "}"


def script(target: Target) -> str:
    """The Lua that makes each wrk request of scenario (a)."""
    pick = (
        # wrk.format with a headers table would drop the -H headers (the API key).
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"local branches = {_lua_list(BRANCHES)}\n"
        f"local statuses = {_lua_list(PAGE_STATUSES)}\n"
        "math.randomseed(7)\n"
        "request = function()\n"
        "  local b = branches[math.random(#branches)]\n"
        "  local s = statuses[math.random(#statuses)]\n"
    )
    if target is Target.PLAIN:
        return (
            pick + '  return wrk.format("GET", "/bench/orders?branch=" .. b .. "&status=" .. s'
            f' .. "&first={PAGE_SIZE}")\nend\n'
        )
    query = json.dumps(ORDERS_QUERY)
    return (
        pick + f"  local body = '{{\"query\": ' .. [[{query}]] .. "
        '\', "variables": {"filter": {"branches": ["\' .. b .. \'"], '
        f'"status": ["\' .. s .. \'"]}}, "first": {PAGE_SIZE}}}}}\'\n'
        '  return wrk.format("POST", "/graphql", nil, body)\n'
        "end\n"
    )


def parse(output: str) -> dict[str, Any]:
    latencies = {f"p{m[0]}Ms": float(m[1]) * UNITS[m[2]] * 1000 for m in LATENCY.findall(output)}
    throughput = THROUGHPUT.search(output)
    non_2xx = NON_2XX.search(output)
    errors = ERRORS.search(output)
    return {
        "throughputPerSecond": float(throughput.group(1)) if throughput else None,
        **latencies,
        "non2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socketErrors": sum(int(n) for n in errors.groups()) if errors else 0,
    }


def run_wrk(spec: Spec, work_dir: Path) -> dict[str, Any]:
    """wrk's figures for ``spec`` (scenario (a), GraphQL or plain) against ``spec.base_url``."""
    lua = work_dir / f"wrk-a-{spec.target}.lua"
    lua.write_text(script(spec.target), encoding="utf-8")
    headers = [part for name, value in spec.headers for part in ("-H", f"{name}: {value}")]
    command = [
        "wrk",
        "--latency",
        "-t",
        "1",
        "-c",
        str(spec.concurrency),
        "-d",
        f"{spec.duration:.0f}s",
        "--timeout",
        "30s",
        "-s",
        str(lua),
        *headers,
        spec.base_url,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip()[-500:] or f"wrk exited {completed.returncode}"}
    return parse(completed.stdout)
