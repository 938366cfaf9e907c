"""What the operator reads on stdout: one line per entry, and one summary line per run.

The words are part of the interface (scripts grep them): `would publish`, `published`,
`withdrew`, `unchanged`, `nothing changed`, `nothing published`, `N sent, N failed`.
"""

from __future__ import annotations

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
