"""`clockfleet publish`: the order of its steps, and its exit codes (cli_common.EXIT_CODES:
0 done, 1 the broker refused, 2 a bad argument or file, 3 a canary aborted, 4 the preflight
failed, 5 the broker unreachable, 6 a version jump refused). Its command line is
publish_args.py; `clockfleet rollout` is rollout_cli.py, `clockfleet keygen` keygen.py.

`--check` stops after the file (no broker, no keys: for CI); `--json` prints the run as one
JSON object on stdout (output.RunRecord) instead of the lines for a person, which it holds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from clockfleet.protocol import signing
from clockfleet.protocol.codec import utcnow_iso
from clockfleet.protocol.connection import (
    UsageError,
    settings_from_args,
)
from clockfleet.publisher import (
    broker_copies,
    broker_io,
    canary,
    fleetfile,
    output,
    plan,
    preflight,
    rollout_publish,
    rollout_run,
)
from clockfleet.publisher.broker_copies import OnBroker
from clockfleet.publisher.cli_common import (
    EXIT_BROKER_REFUSED,
    EXIT_CODES,
    EXIT_INVALID,
    EXIT_PREFLIGHT,
    EXIT_UNREACHABLE,
    EXIT_VERSION_JUMP,
    PUBLISH,
    Keys,
    complain,
    fail,
    load_keys,
    load_record,
    parse,
)
from clockfleet.publisher.issued_record import IssuedRecord, StateFileError
from clockfleet.publisher.output import RunRecord
from clockfleet.publisher.publish_args import publish_parser
from clockfleet.publisher.rollout_watch import Watch
from clockfleet.publisher.wire_objects import (
    BuildError,
    WireObject,
    profile_object,
    region_object,
    seal,
)

log = logging.getLogger("clockfleet.publisher")


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (tests capture it per test)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{PUBLISH}: {record.levelname.lower()}: {self.format(record)}", file=sys.stderr)


def _setup_logging(verbose: bool) -> None:
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
        log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


@dataclass(frozen=True)
class PublishOptions:
    """What the operator asked of this run, typed (argparse's Namespace is not)."""

    config: Path
    timeout_s: float
    dry_run: bool
    prune: bool
    accept_version_jump: bool
    no_wait: bool
    policy: canary.Policy
    preflight: preflight.Options


def publish_main(argv: list[str]) -> int:
    args = parse(publish_parser(), argv)
    if isinstance(args, int):
        return args
    _setup_logging(args.verbose)
    mode = "check" if args.check else "dry-run" if args.dry_run else "publish"
    rec = RunRecord(config=str(args.config), mode=mode)
    if not args.json:
        return _publish(args, rec)
    # The lines for a person (and the preflight's, the canary's) go into the record instead.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = _publish(args, rec)
    rec.lines = printed.getvalue().splitlines()
    print(output.as_json(rec, code, EXIT_CODES[code][0] if code in EXIT_CODES else "error"))
    return code


def _stop(rec: RunRecord, message: str, code: int = EXIT_INVALID) -> int:
    """Say why the run stops (stderr), note it for --json, and return the exit code."""
    rec.error = message
    return fail(PUBLISH, message, code)


def _publish(args: argparse.Namespace, rec: RunRecord) -> int:
    if args.timeout <= 0:
        return _stop(rec, f"--timeout {args.timeout}: must be positive")
    try:
        fleet = fleetfile.load(args.config)
    except fleetfile.FleetFileError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        rec.problems = list(exc.errors)
        n = len(exc.errors)
        return _stop(rec, f"{args.config}: {n} problem{'s' * (n != 1)}; nothing published")
    if args.check:
        return _check(fleet, args, rec)
    try:
        settings = settings_from_args(args)
        policy = canary.policy_from(args.canary, args.bake, fleet.rollout)
        keys = load_keys(args.signing_key or fleet.signing_key, args.trust_key)
        record = load_record(args.state_file, fleet.path)
    except (UsageError, canary.PolicyError, signing.KeyFileError, StateFileError) as exc:
        return _stop(rec, str(exc))
    try:
        session = broker_io.open_session(settings, args.timeout)
    except broker_io.CannotConnect as exc:
        return _stop(rec, str(exc), EXIT_UNREACHABLE)
    rec.broker_protocol = session.version_name
    options = PublishOptions(
        config=args.config,
        timeout_s=args.timeout,
        dry_run=args.dry_run,
        prune=args.prune,
        accept_version_jump=args.accept_version_jump,
        no_wait=args.no_wait,
        policy=policy,
        preflight=preflight.Options(skip=args.no_preflight, force=args.force, dry_run=args.dry_run),
    )
    try:
        return _Publish(options, fleet, settings.prefix, record, keys, session, rec).run()
    finally:
        broker_io.close(session)


def _check(fleet: fleetfile.Fleet, args: argparse.Namespace, rec: RunRecord) -> int:
    """--check: the file, its rollout policy and every list and profile it means, built and
    checked with the agents' strict decoder; no broker, no key, no state file."""
    stamp: WireObject = {"version": 1, "issued_at": utcnow_iso()}
    try:
        canary.policy_from(args.canary, args.bake, fleet.rollout)
        for rid, region in fleet.regions.items():
            seal("region", rid, {**region_object(region), **stamp}, None)
        for aid, agent in fleet.agents.items():
            seal("profile", aid, {**profile_object(agent), **stamp}, None)
    except (canary.PolicyError, BuildError) as exc:
        return _stop(rec, f"{args.config}: {exc}")
    rec.regions, rec.profiles = sorted(fleet.regions), sorted(fleet.agents)
    print(
        f"{args.config}: valid: {len(fleet.regions)} region lists and {len(fleet.agents)} "
        "profiles; no broker contacted"
    )
    return 0


@dataclass
class _Publish:
    """One run of `clockfleet publish` on its one session, step by step."""

    options: PublishOptions
    fleet: fleetfile.Fleet
    prefix: str
    record: IssuedRecord
    keys: Keys
    session: broker_io.PublisherSession
    rec: RunRecord

    def run(self) -> int:
        """Read the broker, plan, shape canaries, preflight, send, and decide canaries."""
        try:
            retained = broker_io.read_retained(self.session, self.prefix, self.options.timeout_s)
        except broker_io.BrokerError as exc:
            return _stop(self.rec, str(exc), EXIT_BROKER_REFUSED)
        on_broker = broker_copies.on_broker(self.prefix, retained, self.keys.trust, self.record)
        the_plan = self._plan(on_broker)
        if isinstance(the_plan, int):
            return the_plan
        self.rec.plan = the_plan
        key = self.keys.signing_key
        shaped = rollout_publish.shape(the_plan, on_broker, self.options.policy, key, self.fleet)
        if shaped.refused:
            for line in shaped.refused:
                complain(PUBLISH, line)
            self.rec.problems = list(shaped.refused)
            return _stop(self.rec, "nothing published")
        blocked = preflight.check(self.options.preflight, the_plan, self.fleet, on_broker)
        if blocked is not None:
            return _stop(self.rec, blocked, EXIT_PREFLIGHT)
        watch: Watch | None = None
        if (shaped.canaries or shaped.continuing) and not self.options.dry_run:
            started = self._watch(shaped)
            if isinstance(started, int):
                return started
            watch = started
        try:
            code = self._send(the_plan)
            if watch is None or code != 0:
                return code
            return self._decide(watch, the_plan, shaped)
        finally:
            if watch is not None:
                watch.close()

    def _plan(self, on_broker: OnBroker) -> plan.Plan | int:
        """The plan, or the exit code when it cannot be made."""
        try:
            return plan.make_plan(
                self.fleet,
                self.prefix,
                on_broker,
                self.record,
                self.keys.signing_key,
                prune=self.options.prune,
                accept_version_jump=self.options.accept_version_jump,
            )
        except BuildError as exc:
            return _stop(self.rec, str(exc))
        except plan.VersionJumpError as exc:
            for line in exc.lines:
                complain(PUBLISH, line)
            self.rec.problems = list(exc.lines)
            return _stop(
                self.rec,
                "refusing to continue from these versions: a key that signs them leaked, or a "
                "publisher issued them in error. Check, then rerun with --accept-version-jump "
                "to adopt them; nothing published",
                EXIT_VERSION_JUMP,
            )

    def _watch(self, shaped: rollout_publish.Shaped) -> Watch | int:
        """The agents' reports, read on this session (a second one as this identity would
        close the first), or the exit code when no canary can go out."""
        watch = Watch(self.session, self.prefix, self.keys.trust, self.record)
        try:
            watch.start(self.options.timeout_s)
        except broker_io.BrokerError as exc:
            watch.close()
            why = f"cannot read the agents' reports for the canary: {exc}"
            return _stop(self.rec, why, EXIT_BROKER_REFUSED)
        empty = rollout_publish.empty_cohorts(
            shaped,
            self.options.policy.percent,
            watch.snapshot().reports,
            rollout_run.placement(self.fleet),
        )
        if empty:
            watch.close()
            for line in empty:
                complain(PUBLISH, line)
            self.rec.problems = list(empty)
            return _stop(self.rec, "nothing published")
        return watch

    def _send(self, the_plan: plan.Plan) -> int:
        to_send = the_plan.of("publish") + the_plan.of("withdraw")
        if self.keys.signing_key is None and the_plan.of("publish"):
            log.warning(
                "no signing key (--signing-key or signing_key in %s): publishing UNSIGNED; "
                "agents configured with a trust key will refuse these lists",
                self.options.config,
            )
        for change in the_plan.of("keep-unlisted"):
            print(output.describe(change))
        if self.options.dry_run:
            for change in to_send:
                print(output.would(change))
            print(output.dry_run_summary(the_plan, to_send, self.session.version_name))
            return 0
        if not to_send:
            print(output.nothing_changed(the_plan, self.options.config))
            return 0

        # Record the versions before sending: a version number is never issued twice, even
        # if this run dies between the publish and the PUBACK.
        for change in the_plan.of("publish"):
            self.record.record(
                self.prefix, change.kind, change.ident, change.new_version or 0, change.payload
            )
        try:
            self.record.save()
        except OSError as exc:
            return _stop(self.rec, f"cannot write the state file {self.record.path}: {exc}")

        results = broker_io.publish_retained(
            self.session, [(c.topic, c.payload) for c in to_send], self.options.timeout_s
        )
        by_topic = {r.topic: r for r in results}
        failed = 0
        for change in to_send:
            result = by_topic[change.topic]
            if result.ok:
                self.rec.acknowledged.add(change.topic)
                print(output.did(change))
            else:
                failed += 1
                self.rec.refused[change.topic] = result.reason
                log.error("%s %s: %s (%s)", change.kind, change.ident, result.reason, change.topic)
        sent = len(to_send) - failed
        print(output.run_summary(the_plan, sent, failed, self.session.version_name))
        if failed:
            self.rec.error = f"{failed} of {len(to_send)} not acknowledged"
        return EXIT_BROKER_REFUSED if failed else 0

    def _decide(self, watch: Watch, the_plan: plan.Plan, shaped: rollout_publish.Shaped) -> int:
        """After the canaries went out: decide them here, or leave them (--no-wait)."""
        regions = set(shaped.canaries) | shaped.continuing
        if self.options.no_wait:
            for region in sorted(regions):
                print(f"region {region}: canary left to `clockfleet rollout run` (--no-wait)")
            return 0
        ender = rollout_run.Ender(
            self.session,
            self.record,
            self.prefix,
            self.keys.signing_key,
            self.options.timeout_s,
            self.fleet,
        )
        published = {
            c.ident: c.new_version or 0
            for c in the_plan.of("publish")
            if c.ident in shaped.canaries
        }
        return rollout_run.drive(watch, ender, regions, at_least=published)
