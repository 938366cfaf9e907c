"""`clockfleet rollout status|run|promote|abort`: watch and steer canary rollouts.

status   per region: phase (canary, baking, promoted, aborted, none), cohort size, cohort
         reports ok/failing, time left; a table or --json. Reads the broker only.
run      decide every region's canary (or --region's) by the rules in the canary list:
         what a killed `clockfleet publish --canary` leaves, this finishes.
promote  end a region's canary now with the new servers (the operator's decision).
abort    end a region's canary now with the previous servers.

Exit codes: 0 done (all promoted), 1 a decision not published or still undecided at
--deadline, 2 bad argument, broker unreachable, no canary to end, 3 a rollout aborted.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path

from clockfleet.protocol import signing
from clockfleet.protocol.connection import (
    UsageError,
    add_arguments,
    command_parser,
    settings_from_args,
)
from clockfleet.protocol.rollout import region_status, trial
from clockfleet.publisher import broker_io, canary, fleetfile, rollout_run
from clockfleet.publisher.cli_common import ROLLOUT, Parser, fail, load_keys, load_record, parse
from clockfleet.publisher.issued_record import StateFileError
from clockfleet.publisher.rollout_watch import Snapshot, Watch

# One row of `rollout status`: region_status's fields, the region, its version.
StatusRow = dict[str, object]


def parser() -> argparse.ArgumentParser:
    p = command_parser(ROLLOUT, __doc__.split("\n\n", 1)[1], parser_class=Parser)
    p.add_argument("action", choices=("status", "run", "promote", "abort"))
    p.add_argument("--region", metavar="ID", help="only this region (required by promote/abort)")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.add_argument("--config", metavar="FILE", type=Path, default=Path("config/fleet.yaml"))
    p.add_argument("--signing-key", metavar="FILE", type=Path)
    p.add_argument("--trust-key", metavar="FILE|DIR", type=Path, action="append", default=[])
    p.add_argument("--state-file", metavar="FILE", type=Path)
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0)
    p.add_argument(
        "--deadline",
        metavar="SECONDS",
        type=float,
        help="run: give up (exit 1, region left in canary and named) after this long",
    )
    add_arguments(p)
    return p


def main(argv: list[str]) -> int:
    args = parse(parser(), argv)
    if isinstance(args, int):
        return args
    if args.action in ("promote", "abort") and not args.region:
        return fail(ROLLOUT, f"{args.action} needs --region")
    try:
        settings = settings_from_args(args)
    except UsageError as exc:
        return fail(ROLLOUT, str(exc))
    try:
        # The file places agents in regions (who judges a canary) and is what a stale copy
        # is replaced with; `status` reads it when it is there.
        fleet = fleetfile.load(args.config) if args.config.exists() else None
        key_path = None
        if args.action != "status":
            key_path = args.signing_key or (fleet.signing_key if fleet else None)
            if key_path is None:
                return fail(ROLLOUT, "a signing key is needed (--signing-key or the fleet file's)")
        keys = load_keys(key_path, args.trust_key)
        # The publisher's record: what is current (an older broker copy is a replay).
        record = load_record(args.state_file, args.config)
        # One session for reading and for ending a rollout: the shipped broker binds client
        # ids to identities, so a second one as this identity would close the first.
        session = broker_io.open_session(settings, args.timeout)
    except (
        signing.KeyFileError,
        fleetfile.FleetFileError,
        StateFileError,
        broker_io.CannotConnect,
    ) as exc:
        return fail(ROLLOUT, str(exc))
    watch = Watch(session, settings.prefix, keys.trust, record)
    try:
        watch.start(args.timeout)
        if args.action == "status":
            time.sleep(0.2)  # a quiet spell for brokers that replay retained state late
            placed = rollout_run.placement(fleet)
            return show_status(watch.snapshot(), args.region, args.json, placed, fleet)
        ender = rollout_run.Ender(
            session, record, settings.prefix, keys.signing_key, args.timeout, fleet
        )
        if args.action == "run":
            regions = {args.region} if args.region else None
            return rollout_run.drive(watch, ender, regions, deadline_s=args.deadline)
        phase = "promoted" if args.action == "promote" else "aborted"
        return rollout_run.end_by_hand(watch, ender, args.region, phase)
    except broker_io.BrokerError as exc:
        return fail(ROLLOUT, str(exc))
    finally:
        watch.close()
        broker_io.close(session)


def status_rows(
    snap: Snapshot,
    now: float,
    placed: Mapping[str, str] | None = None,
    fleet: fleetfile.Fleet | None = None,
) -> list[StatusRow]:
    """One row per region list; a list not to be acted on (stale, unsigned) has phase
    `refused` and its reason. Without a fleet file (`placed` None) a canary's cohort is taken
    from the reports' own word, and the row says so. `fleet`: who takes a region's zone (a
    zone change's cohort); without it, the reports' zones say."""
    rows: list[StatusRow] = [
        {
            "region": region,
            "version": sl.version,
            **region_status(
                sl,
                snap.reports,
                snap.baselines,
                now,
                placed,
                canary.zone_followers(fleet, region),
            ),
            **({} if placed is not None or trial(sl) is None else {"placement": "reports"}),
        }
        for region, (sl, _) in snap.lists.items()
    ]
    rows += [
        {"region": region, "phase": "refused", "cohort": 0, "ok": 0, "failing": 0,
         "pending": 0, "time_left_s": 0.0, "version": None, "reason": problem}
        for region, problem in snap.list_problems.items()
    ]  # fmt: skip
    return sorted(rows, key=lambda r: str(r["region"]))


def show_status(
    snap: Snapshot,
    region: str | None,
    as_json: bool,
    placed: Mapping[str, str] | None = None,
    fleet: fleetfile.Fleet | None = None,
) -> int:
    rows = [
        r for r in status_rows(snap, time.time(), placed, fleet) if region in (None, r["region"])
    ]
    if as_json:
        print(json.dumps({"regions": rows}, indent=1))
        return 0
    head = ("REGION", "PHASE", "VERSION", "CHANGE", "COHORT", "OK", "FAILING", "LEFT", "REASON")
    lines = [head]
    for r in rows:
        left = f"{r['time_left_s']:.0f}s" if r["phase"] in ("canary", "baking") else "-"
        lines.append(
            (
                str(r["region"]),
                str(r["phase"]),
                "-" if r["version"] is None else str(r["version"]),
                str(r.get("change", "-")),
                str(r["cohort"]),
                str(r["ok"]),
                str(r["failing"]),
                left,
                "".join(ch if ch.isprintable() else "?" for ch in str(r.get("reason", ""))),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1])
    if region is not None and not rows:
        return fail(ROLLOUT, f"region {region}: no list on the broker")
    return 0
