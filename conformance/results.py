"""Reading Autobahn|Testsuite reports and comparing an agent with its control: no I/O but the reads.

The harness (``conformance.run``) runs every case twice on each leg: once through the gateway and
once without it (the control). This module turns the two agents' ``index.json`` entries into
counts per case group and into the list of cases where the gateway does worse than its control.

Ranking. Autobahn gives each case two verdicts: ``behavior`` (did the right frames and messages
arrive) and ``behaviorClose`` (was the closing handshake right). Both are compared separately.

* Passing, rank 0: ``OK``, ``NON-STRICT`` (passed, though not in the strictest way the RFC
  allows), ``INFORMATIONAL`` (the case has no pass/fail, e.g. which close code came back) and
  ``UNIMPLEMENTED`` (an optional extension, permessage-deflate, was not negotiated: declining it
  is allowed; on the upstream-facing leg neither the gateway nor the echo client offers it, by
  design). On the client-facing leg the gateway runs with compression on, so an ``UNIMPLEMENTED``
  there against a control's ``OK`` means it declined an offer: rank-equal, so it is listed as a
  difference, and ``tests/integration/test_conformance.py`` fails on it.
* Failing, by how much is wrong, in the order Autobahn's own close check tests them (so the first
  criterion a case breaks is its verdict): ``FAILED BY CLIENT`` rank 1 (the closing handshake
  completed but the server did not close TCP, so the suite had to: RFC 6455 7.1.1 says the server
  SHOULD close first), ``WRONG CODE`` rank 2 (a clean close with a code the case does not allow),
  ``UNCLEAN`` rank 3 (the connection was not closed cleanly where the case requires it),
  ``FAILED`` rank 4 (wrong frames, or the wrong endpoint closed, or no handshake).
* A case the gateway agent has no result for, while the control has one, ranks 5 (``MISSING``).

The gateway is *worse* on a case when, for either verdict, its rank is above the control's. Two
passing verdicts that differ (``OK`` against ``NON-STRICT``) are not worse; they are listed as
*differences*, as is any other pair of different verdicts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "FIELDS",
    "OUTCOMES",
    "Comparison",
    "LegResult",
    "case_key",
    "compare",
    "group_of",
    "load_index",
    "rank",
    "render_tables",
]

#: Every verdict Autobahn gives, in the column order of the tables.
OUTCOMES: Final = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED",
                   "FAILED", "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT")
MISSING: Final = "MISSING"
#: The two verdicts of a case, as named in index.json, with a label for the tables.
FIELDS: Final = (("behavior", "behaviour"), ("behaviorClose", "close behaviour"))

_RANK: Final[Mapping[str, int]] = {
    "OK": 0, "NON-STRICT": 0, "INFORMATIONAL": 0, "UNIMPLEMENTED": 0,
    "FAILED BY CLIENT": 1, "WRONG CODE": 2, "UNCLEAN": 3, "FAILED": 4, MISSING: 5,
}
_CASE_ID: Final = re.compile(r"^\d+(\.\d+)*$")


def rank(verdict: str) -> int:
    """How bad a verdict is: 0 passes, higher is worse (see the module docstring).

    An unknown verdict ranks as ``FAILED``: a new Autobahn release must not hide a failure.
    """
    return _RANK.get(verdict, _RANK["FAILED"])


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort key of a case id: "9.10.1" after "9.2.1", as numbers, not as text."""
    return tuple(int(part) for part in case_id.split("."))


def group_of(case_id: str, depth: int = 1) -> str:
    """The case group at ``depth`` levels: "7.3.2" is "7.x" at depth 1 and "7.3.x" at depth 2."""
    parts = case_id.split(".")
    if len(parts) <= depth:
        depth = len(parts) - 1
    return ".".join(parts[:depth]) + ".x"


def load_index(outdir: Path, agent: str) -> dict[str, dict[str, Any]]:
    """One agent's entries of a report directory's ``index.json`` (case id -> entry); {} if absent.

    Each entry gets ``detail``: the fields of the per-case JSON report (``reportfile``) that say
    why a verdict was given, without the wire log (which stays in the report files).
    """
    index_path = outdir / "index.json"
    if not index_path.is_file():
        return {}
    index = json.loads(index_path.read_text(encoding="utf-8"))
    entries: dict[str, dict[str, Any]] = {}
    for case_id, entry in (index.get(agent) or {}).items():
        if not _CASE_ID.match(case_id):
            continue
        entry = dict(entry)
        report = outdir / str(entry.get("reportfile", ""))
        if entry.get("reportfile") and report.is_file():
            case = json.loads(report.read_text(encoding="utf-8"))
            entry["detail"] = {key: case.get(key) for key in (
                "description", "result", "resultClose", "closedByMe", "droppedByMe", "failedByMe", "wasClean",
                "wasNotCleanReason", "wasCloseHandshakeTimeout", "wasServerConnectionDropTimeout",
                "localCloseCode", "localCloseReason", "remoteCloseCode", "remoteCloseReason")}
        entries[case_id] = entry
    return entries


@dataclass(frozen=True, slots=True)
class Comparison:
    """One verdict of one case that differs between the gateway agent and its control."""

    leg: str
    case_id: str
    key: str  # the index.json field: "behavior" or "behaviorClose"
    gateway: str
    control: str
    worse: bool
    detail: Mapping[str, Any] = field(default_factory=dict)

    def sentence(self) -> str:
        """The comparison as a line an operator reads: what the gateway got, against what, and why."""
        label = dict(FIELDS)[self.key]
        why = self.detail.get("resultClose" if self.key == "behaviorClose" else "result") or ""
        codes = ""
        if self.detail:
            codes = (f" (gateway sent close {self.detail.get('remoteCloseCode')}, suite sent "
                     f"{self.detail.get('localCloseCode')}, closed by suite: {self.detail.get('closedByMe')}, "
                     f"TCP dropped by suite: {self.detail.get('droppedByMe')})")
        return f"{self.leg} {self.case_id} {label}: {self.gateway} (control {self.control}){codes}: {why}"


@dataclass(frozen=True, slots=True)
class LegResult:
    """Both agents' verdicts on one leg, read from that leg's report directory."""

    leg: str
    gateway_agent: str
    control_agent: str
    gateway: Mapping[str, Mapping[str, Any]]
    control: Mapping[str, Mapping[str, Any]]

    def case_ids(self) -> list[str]:
        """Every case either agent has a result for, in suite order."""
        return sorted(set(self.gateway) | set(self.control), key=case_key)

    def counts(self, field_name: str, depth: int = 1) -> dict[str, dict[str, tuple[int, int]]]:
        """group -> verdict -> (gateway count, control count), groups in suite order."""
        table: dict[str, dict[str, list[int]]] = {}
        for case_id in self.case_ids():
            row = table.setdefault(group_of(case_id, depth), {})
            for column, agent in enumerate((self.gateway, self.control)):
                verdict = str(agent[case_id].get(field_name, "FAILED")) if case_id in agent else MISSING
                row.setdefault(verdict, [0, 0])[column] += 1
        return {group: {verdict: (g, c) for verdict, (g, c) in row.items()} for group, row in table.items()}

    def as_json(self) -> dict[str, Any]:
        """The machine-readable form: agents, counts per group (both depths) and every case's verdicts."""
        def verdicts(entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
            if entry is None:
                return None
            return {key: entry.get(key) for key in ("behavior", "behaviorClose", "remoteCloseCode", "duration")}

        return {
            "gateway_agent": self.gateway_agent,
            "control_agent": self.control_agent,
            "groups": {name: self.counts(name, 1) for name, _ in FIELDS},
            "subgroups": {name: self.counts(name, 2) for name, _ in FIELDS},
            "cases": {case_id: {"gateway": verdicts(self.gateway.get(case_id)),
                                "control": verdicts(self.control.get(case_id))}
                      for case_id in self.case_ids()},
        }


def compare(result: LegResult) -> list[Comparison]:
    """Every verdict where the gateway agent differs from the control, worse ones marked."""
    found: list[Comparison] = []
    for case_id in result.case_ids():
        gateway = result.gateway.get(case_id)
        control = result.control.get(case_id)
        if control is None:
            continue  # nothing to compare with (the control did not run it)
        for name, _ in FIELDS:
            mine = str(gateway.get(name, "FAILED")) if gateway is not None else MISSING
            theirs = str(control.get(name, "FAILED"))
            if mine != theirs:
                found.append(Comparison(result.leg, case_id, name, mine, theirs, rank(mine) > rank(theirs),
                                        (gateway or {}).get("detail") or {}))
    return found


def _cell(pair: tuple[int, int] | None) -> str:
    if not pair or pair == (0, 0):
        return ""
    gateway, control = pair
    return f"{gateway}/{control}" if gateway == control else f"**{gateway}/{control}**"


def render_table(result: LegResult, field_name: str, depth: int = 1, only: Iterable[str] | None = None) -> str:
    """A Markdown table of one verdict's counts: a row per group, a "gateway/control" cell per verdict.

    Cells where the two agents differ are in bold; empty cells mean neither agent had that verdict.
    ``only`` keeps the rows whose group starts with one of its prefixes.
    """
    counts = result.counts(field_name, depth)
    columns = [c for c in (*OUTCOMES, MISSING) if c != MISSING
               or any(MISSING in row for row in counts.values())]
    lines = ["| group | cases | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    prefixes = tuple(only) if only is not None else None
    for group, row in counts.items():
        if prefixes is not None and not group.startswith(prefixes):
            continue
        total = sum(g for g, _ in row.values())
        lines.append(f"| {group} | {total} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def render_tables(results: Iterable[LegResult]) -> str:
    """Every table the harness prints: per leg and verdict, by top-level group, then the second
    level of each top-level group where the gateway's counts differ from the control's."""
    out: list[str] = []
    for result in results:
        for name, label in FIELDS:
            out.append(f"### {result.leg}: {label} ({result.gateway_agent}/{result.control_agent})\n")
            out.append(render_table(result, name))
            top = result.counts(name, 1)
            differing = [group[:-1] for group, row in top.items()
                         if any(g != c for g, c in row.values())]
            deeper = [g for g in differing if any(group_of(c, 1)[:-1] == g and len(c.split(".")) > 2
                                                 for c in result.case_ids())]
            if deeper:
                out.append(f"\nBy subgroup, where {result.gateway_agent} differs:\n")
                out.append(render_table(result, name, depth=2, only=deeper))
            out.append("")
    return "\n".join(out)
