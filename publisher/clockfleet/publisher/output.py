"""What the operator reads on stdout: one line per entry, and one summary line per run.

The words are part of the interface (scripts grep them): `would publish`, `published`,
`withdrew`, `unchanged`, `nothing changed`, `nothing published`, `N sent, N failed`.
With --json the same run is one JSON object instead (`RunRecord`, `as_json`), its `lines`
the lines above.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from clockfleet.publisher.plan import Change, Plan


def describe(change: Change) -> str:
    """One line: what the entry is, and what happens (or happened) to it."""
    name = f"{change.kind} {change.ident}"
    old = "absent" if change.old_version is None else str(change.old_version)
    if change.not_counted is not None and change.old_version is not None:
        old += f" (not counted: {change.not_counted})"
    if change.action == "publish":
        why = f" ({', '.join(change.fields)})" if change.fields else ""
        return f"{name}: {old} -> {change.new_version}{why}"
    if change.action == "withdraw":
        return f"{name} (version {old} on the broker, not in the file)"
    if change.action == "keep-unlisted":
        return (
            f"{name}: on the broker (version {old}) but not in the file; "
            f"left in place (--prune withdraws it)"
        )
    return f"{name}: unchanged (version {old})"


def would(change: Change) -> str:
    """A dry run's line for an entry it would send."""
    verb = "publish" if change.action == "publish" else "withdraw"
    return f"would {verb} {describe(change)}"


def did(change: Change) -> str:
    """The line for an entry the broker acknowledged."""
    verb = "published" if change.action == "publish" else "withdrew"
    return f"{verb} {describe(change)}"


def dry_run_summary(plan: Plan, to_send: list[Change], broker_version: str) -> str:
    return (
        f"dry run against {broker_version} broker: {len(to_send)} to send, "
        f"{len(plan.of('unchanged'))} unchanged; nothing published"
    )


def nothing_changed(plan: Plan, config: Path) -> str:
    return (
        f"nothing changed: {len(plan.of('unchanged'))} region lists and profiles on the broker "
        f"match {config}; nothing published"
    )


def run_summary(plan: Plan, sent: int, failed: int, broker_version: str) -> str:
    return f"{sent} sent, {failed} failed, {len(plan.of('unchanged'))} unchanged ({broker_version})"


# --- --json: one object on stdout for scripts and CI -------------------------------------

JSON_SCHEMA = "clockfleet-publish/1"


@dataclass
class RunRecord:
    """What one run of `clockfleet publish` did, for --json: filled in as the run goes."""

    config: str
    mode: str  # "check", "dry-run" or "publish"
    problems: list[str] = field(default_factory=list)  # why the run stopped, line by line
    error: str | None = None  # the one line on stderr that ended the run
    broker_protocol: str | None = None
    plan: Plan | None = None
    refused: dict[str, str] = field(default_factory=dict)  # topic -> why the broker refused
    acknowledged: set[str] = field(default_factory=set)  # topics the broker acknowledged
    regions: list[str] = field(default_factory=list)  # --check: what the file holds
    profiles: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # what the run printed for a person


def _change_json(change: Change, rec: RunRecord) -> dict[str, object]:
    sent: bool | None = None
    if change.topic in rec.acknowledged:
        sent = True
    elif change.topic in rec.refused:
        sent = False
    return {
        "kind": change.kind,
        "id": change.ident,
        "topic": change.topic,
        "action": change.action,
        "old_version": change.old_version,
        "new_version": change.new_version,
        "fields": change.fields,
        "not_counted": change.not_counted,
        "sent": sent,
        "refused": rec.refused.get(change.topic),
    }


def as_json(rec: RunRecord, code: int, outcome: str) -> str:
    """The run as one JSON object (one line): `outcome` names `code` (cli_common.EXIT_CODES)."""
    changes = rec.plan.changes if rec.plan is not None else []
    doc: dict[str, object] = {
        "schema": JSON_SCHEMA,
        "config": rec.config,
        "mode": rec.mode,
        "exit_code": code,
        "outcome": outcome,
        "error": rec.error,
        "problems": rec.problems,
        "broker_protocol": rec.broker_protocol,
        "changes": [_change_json(c, rec) for c in changes],
        "counts": {
            action: sum(1 for c in changes if c.action == action)
            for action in ("publish", "withdraw", "keep-unlisted", "unchanged")
        },
        "lines": rec.lines,
    }
    if rec.mode == "check":
        doc["regions"] = rec.regions
        doc["profiles"] = rec.profiles
    return json.dumps(doc, ensure_ascii=False)
