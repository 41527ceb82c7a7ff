"""`llm-log-analyzer investigate --since 10m [--service NAME] [--api URL] [--token T]`: ask the running
analyzer why, for the last `since` of event time (now on the wall clock is taken as the window's end).
It calls `POST /api/v1/investigate` and prints the report it stored and exported."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from receiver.model import R_CANDIDATES, R_CONFIDENCE, R_ROOT_CAUSE

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `2h` -> seconds; ValueError naming the expected form."""
    m = _DURATION.match(text.strip())
    if m is None or float(m[1]) <= 0:
        raise ValueError(f"--since: expected a positive duration such as 90s, 10m or 2h, got {text!r}")
    return float(m[1]) * _UNIT_S[m[2]]


def run(since: str, service: str | None, api: str, token: str | None, as_json: bool,
        now_ns: int | None = None) -> int:
    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    end = now_ns if now_ns is not None else time.time_ns()
    body = {"start": end - int(seconds * 1e9), "end": end} | ({"service": service} if service else {})
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(api.rstrip("/") + "/api/v1/investigate", data=json.dumps(body).encode(),
                                 method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            report = json.loads(r.read())
    except urllib.error.HTTPError as e:
        print(f"error: {api}: HTTP {e.code}: {e.read().decode(errors='replace')[:500]}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"error: {api}: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(report))
        return 0
    print(f"root cause: {report.get(R_ROOT_CAUSE)} (confidence {report.get(R_CONFIDENCE)})")
    print(f"candidates: {', '.join(map(str, report.get(R_CANDIDATES, [])))}")
    print(report.get("body", ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm-log-analyzer investigate", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    return run(args.since, args.service, args.api, args.token, args.json)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--since", required=True, help="the window: the last 90s, 10m, 2h ...")
    ap.add_argument("--service", default=None, help="focus on this service, what it calls and what calls it")
    ap.add_argument("--api", default="http://127.0.0.1:8080",
                    help="the analyzer's HTTP API (default http://127.0.0.1:8080)")
    ap.add_argument("--token", default=None, help="bearer token when api.auth_tokens is set")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
