"""`clockfleet publish`: the operator's command (`clockfleet keygen` is keygen.py).

Exit codes: 0 done (or nothing to do), 1 the broker refused or did not acknowledge a
publish, 2 a bad argument, an invalid fleet file, a bad key, an unreachable broker or a
new or moved server failing the preflight (preflight.py) without --force.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clockfleet.protocol import signing
from clockfleet.protocol.connection import (
    UsageError,
    add_arguments,
    settings_from_args,
)
from clockfleet.protocol.ids import ID_PATTERN
from clockfleet.publisher import (
    broker_copies,
    broker_io,
    fleetfile,
    output,
    plan,
    preflight,
    rollout,
    rollout_publish,
    rollout_run,
    state,
)
from clockfleet.publisher.rollout_watch import Watch

log = logging.getLogger("clockfleet.publisher")

STATE_FILE_NAME = ".publisher-state.json"

PUBLISH_DESCRIPTION = """\
Validate the fleet file, then publish every region's NTP server list and every agent's
profile that differs from what the broker holds, as signed, retained MQTT messages (QoS 1,
waiting for each PUBACK). An unchanged file publishes nothing. A changed region or profile
gets version = max(verified version on the broker, the state file's record, YYYYMMDD00 of
today) + 1, so versions never go backwards even when the broker lost its retained state.
Only a broker copy whose signature verifies with a key this publisher holds (--signing-key,
--trust-key) counts: an unsigned or forged retained message is reported, not counted, and
replaced.

An invalid file is reported in full (FILE:LINE: PATH: reason per problem) with exit 2, and
nothing is published.

Preflight: every server that is new in a changed list, or at another position, is queried
from this host with the agents' own checks, one line per server. A server that fails blocks
the publish (exit 2) unless --force: some servers answer only from the PBXs' networks.
"""

PUBLISH_EPILOG = f"""\
fleet file: `signing_key` (optional, relative to the file), `defaults` (poll_interval_s
16..604800, resync_jitter_s 0..3600), `regions` (id -> timezone, servers [{{host, port}}] in
the order agents try them, optional poll_interval_s/resync_jitter_s) and `agents` (id ->
region, optional timezone; default: the region's). Ids: {ID_PATTERN}. Unknown keys are
errors. Example: config/fleet.yaml.

exit codes: 0 published (or nothing to publish), 1 the broker refused or did not acknowledge
a publish (e.g. the ACL denies this identity), 2 bad argument, invalid fleet file, bad key,
a new or moved server failing the preflight (without --force),
broker unreachable / login refused, or a verified version on the broker more than
1,000,000 (a year of date floors) above this publisher's own record and today's date floor
(a leaked key or a broken publisher; --accept-version-jump adopts it).

state file: JSON with the highest version issued per prefix, region and profile, written
before publishing. Default: .publisher-state.json next to the fleet file. Keep it (it is
what stops versions from going backwards when the broker lost its state); keep it out of git.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (and exit 2), not usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (tests capture it per test)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(
            f"clockfleet publish: {record.levelname.lower()}: {self.format(record)}",
            file=sys.stderr,
        )


def _setup_logging(verbose: bool) -> None:
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
        log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def _fail(message: str, code: int = 2) -> int:
    print(f"clockfleet publish: {message}", file=sys.stderr)
    return code


def publish_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="clockfleet publish",
        description=PUBLISH_DESCRIPTION,
        epilog=PUBLISH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        default="config/fleet.yaml",
        type=Path,
        help="the fleet file (default: config/fleet.yaml)",
    )
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        type=Path,
        help="Ed25519 private key (from `clockfleet keygen`); overrides the file's signing_key. "
        "Without any key the lists go out unsigned, and agents with a trust key refuse them",
    )
    p.add_argument(
        "--trust-key",
        metavar="FILE|DIR",
        type=Path,
        action="append",
        default=[],
        help="public key (.pub, or a directory of them) whose signatures on the broker's "
        "copies count as this publisher's own, e.g. the key retired by a rotation; repeatable. "
        "The signing key's own public half always counts",
    )
    p.add_argument(
        "--accept-version-jump",
        action="store_true",
        help="adopt a verified version on the broker even when it is more than 1,000,000 "
        "above this publisher's record and today's date floor (refused by default, exit 2)",
    )
    p.add_argument(
        "--state-file",
        metavar="FILE",
        type=Path,
        help=f"the publisher's record of issued versions (default: {STATE_FILE_NAME} "
        "next to the fleet file)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would change against the broker (old -> new version, fields that "
        "differ) and publish nothing",
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="withdraw (empty retained message) regions and profiles the broker holds but the "
        "file no longer has; without it they are left in place and listed",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=10.0,
        help="seconds to wait for the broker at each step (default: 10)",
    )
    p.add_argument(
        "--canary",
        metavar="PERCENT",
        help="publish changed server lists to this share of each region's agents first (e.g. "
        "10%%), then promote or abort by the cohort's reports (docs/rollout.md); default: the "
        "fleet file's rollout.canary, else 0 (the whole region at once)",
    )
    p.add_argument(
        "--bake",
        metavar="SECONDS",
        type=float,
        help="with a canary: how long the cohort runs the new list before promotion "
        f"(default: rollout.bake_s, else {rollout.DEFAULT_BAKE_S})",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="with a canary: publish it and exit; `clockfleet rollout run` decides later",
    )
    preflight.add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    add_arguments(p)
    return p


def publish_main(argv: list[str]) -> int:
    try:
        args = publish_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    _setup_logging(args.verbose)
    if args.timeout <= 0:
        return _fail(f"--timeout {args.timeout}: must be positive")

    try:
        fleet = fleetfile.load(args.config)
    except fleetfile.FleetFileError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        n = len(exc.errors)
        return _fail(f"{args.config}: {n} problem{'s' * (n != 1)}; nothing published")

    try:
        settings = settings_from_args(args)
        policy = rollout_publish.policy_from(args.canary, args.bake, fleet.rollout)
    except (UsageError, rollout.PolicyError) as exc:
        return _fail(str(exc))
    args.policy, args.settings = policy, settings

    key_path = args.signing_key or fleet.signing_key
    key = None
    if key_path is not None:
        try:
            key = signing.load_signing_key(key_path)
        except signing.KeyFileError as exc:
            return _fail(str(exc))
    try:
        trust = signing.load_trust(args.trust_key)
    except signing.KeyFileError as exc:
        return _fail(str(exc))
    if key is not None:
        trust.keys.update(signing.trust_of(key).keys)

    state_path = args.state_file or fleet.path.parent / STATE_FILE_NAME
    try:
        record = state.load_state(state_path)
        session = broker_io.open_session(settings, args.timeout)
    except (state.StateError, broker_io.CannotConnect) as exc:
        return _fail(str(exc))
    try:
        return _publish(args, fleet, settings.prefix, record, key, trust, session)
    finally:
        broker_io.close(session)


def _publish(
    args: argparse.Namespace,
    fleet: fleetfile.Fleet,
    prefix: str,
    record: state.State,
    key: signing.SigningKey | None,
    trust: signing.TrustStore,
    session: broker_io.Session,
) -> int:
    try:
        retained = broker_io.read_retained(session, prefix, args.timeout)
    except broker_io.BrokerError as exc:
        return _fail(str(exc), 1)
    on_broker = broker_copies.on_broker(prefix, retained, trust, record)
    try:
        the_plan = plan.make_plan(
            fleet,
            prefix,
            on_broker,
            record,
            key,
            prune=args.prune,
            accept_version_jump=args.accept_version_jump,
        )
    except plan.BuildError as exc:
        return _fail(str(exc))
    except plan.VersionJumpError as exc:
        for line in exc.lines:
            print(f"clockfleet publish: {line}", file=sys.stderr)
        return _fail(
            "refusing to continue from these versions: a key that signs them leaked, or a "
            "publisher issued them in error. Check, then rerun with --accept-version-jump to "
            "adopt them; nothing published"
        )

    shaped = rollout_publish.shape(the_plan, on_broker, args.policy, key)
    if shaped.refused:
        for line in shaped.refused:
            print(f"clockfleet publish: {line}", file=sys.stderr)
        return _fail("nothing published")
    blocked = preflight.check(args, the_plan, fleet, on_broker)
    if blocked is not None:
        return blocked
    watch = None
    if (shaped.canaries or shaped.continuing) and not args.dry_run:
        # The same session: a second one as this identity would close the first.
        watch = Watch(session, prefix, trust, record)
        try:
            watch.start(args.timeout)
        except broker_io.BrokerError as exc:
            watch.close()
            return _fail(f"cannot read the agents' reports for the canary: {exc}", 1)
        empty = rollout_publish.empty_cohorts(
            shaped, args.policy.percent, watch.snapshot().reports, rollout_run.placement(fleet)
        )
        if empty:
            watch.close()
            for line in empty:
                print(f"clockfleet publish: {line}", file=sys.stderr)
            return _fail("nothing published")
    try:
        code = _send(args, the_plan, prefix, record, key, session)
        if watch is None or code != 0:
            return code
        if args.no_wait:
            for region in sorted(set(shaped.canaries) | shaped.continuing):
                print(f"region {region}: canary left to `clockfleet rollout run` (--no-wait)")
            return 0
        ender = rollout_run.Ender(session, record, prefix, key, args.timeout, fleet)
        published = {
            c.ident: c.new_version or 0
            for c in the_plan.of("publish")
            if c.ident in shaped.canaries
        }
        regions = set(shaped.canaries) | shaped.continuing
        return rollout_run.drive(watch, ender, regions, at_least=published)
    finally:
        if watch is not None:
            watch.close()


def _send(
    args: argparse.Namespace,
    the_plan: plan.Plan,
    prefix: str,
    record: state.State,
    key: signing.SigningKey | None,
    session: broker_io.Session,
) -> int:
    to_send = the_plan.of("publish") + the_plan.of("withdraw")
    if key is None and the_plan.of("publish"):
        log.warning(
            "no signing key (--signing-key or signing_key in %s): publishing UNSIGNED; "
            "agents configured with a trust key will refuse these lists",
            args.config,
        )
    for change in the_plan.of("keep-unlisted"):
        print(output.describe(change))
    if args.dry_run:
        for change in to_send:
            print(output.would(change))
        print(output.dry_run_summary(the_plan, to_send, session.version_name))
        return 0
    if not to_send:
        print(output.nothing_changed(the_plan, args.config))
        return 0

    # Record the versions before sending: a version number is never issued twice, even if
    # this run dies between the publish and the PUBACK.
    for change in the_plan.of("publish"):
        record.record(prefix, change.kind, change.ident, change.new_version or 0, change.payload)
    try:
        record.save()
    except OSError as exc:
        return _fail(f"cannot write the state file {record.path}: {exc}")

    outcomes = broker_io.publish_retained(
        session, [(c.topic, c.payload) for c in to_send], args.timeout
    )
    by_topic = {o.topic: o for o in outcomes}
    failed = 0
    for change in to_send:
        outcome = by_topic[change.topic]
        if outcome.ok:
            print(output.did(change))
        else:
            failed += 1
            log.error("%s %s: %s (%s)", change.kind, change.ident, outcome.reason, change.topic)
    print(output.run_summary(the_plan, len(to_send) - failed, failed, session.version_name))
    return 1 if failed else 0
