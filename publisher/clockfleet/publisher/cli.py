"""`clockfleet publish`: the order of its steps, and its exit codes. Its command line is
publish_args.py; `clockfleet rollout` is rollout_cli.py, `clockfleet keygen` keygen.py.

Exit codes: 0 done (or nothing to do), 1 the broker refused or did not acknowledge a
publish, 2 a bad argument, an invalid fleet file, a bad key, an unreachable broker or a
new or moved server failing the preflight (preflight.py) without --force.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from clockfleet.protocol import signing
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
    PUBLISH,
    Keys,
    complain,
    fail,
    load_keys,
    load_record,
    parse,
)
from clockfleet.publisher.issued_record import IssuedRecord, StateFileError
from clockfleet.publisher.publish_args import publish_parser
from clockfleet.publisher.rollout_watch import Watch
from clockfleet.publisher.wire_objects import BuildError

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
    if args.timeout <= 0:
        return fail(PUBLISH, f"--timeout {args.timeout}: must be positive")

    try:
        fleet = fleetfile.load(args.config)
    except fleetfile.FleetFileError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        n = len(exc.errors)
        return fail(PUBLISH, f"{args.config}: {n} problem{'s' * (n != 1)}; nothing published")

    try:
        settings = settings_from_args(args)
        policy = canary.policy_from(args.canary, args.bake, fleet.rollout)
        keys = load_keys(args.signing_key or fleet.signing_key, args.trust_key)
        record = load_record(args.state_file, fleet.path)
        session = broker_io.open_session(settings, args.timeout)
    except (
        UsageError,
        canary.PolicyError,
        signing.KeyFileError,
        StateFileError,
        broker_io.CannotConnect,
    ) as exc:
        return fail(PUBLISH, str(exc))
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
        return _Publish(options, fleet, settings.prefix, record, keys, session).run()
    finally:
        broker_io.close(session)


@dataclass
class _Publish:
    """One run of `clockfleet publish` on its one session, step by step."""

    options: PublishOptions
    fleet: fleetfile.Fleet
    prefix: str
    record: IssuedRecord
    keys: Keys
    session: broker_io.PublisherSession

    def run(self) -> int:
        """Read the broker, plan, shape canaries, preflight, send, and decide canaries."""
        try:
            retained = broker_io.read_retained(self.session, self.prefix, self.options.timeout_s)
        except broker_io.BrokerError as exc:
            return fail(PUBLISH, str(exc), 1)
        on_broker = broker_copies.on_broker(self.prefix, retained, self.keys.trust, self.record)
        the_plan = self._plan(on_broker)
        if isinstance(the_plan, int):
            return the_plan
        key = self.keys.signing_key
        shaped = rollout_publish.shape(the_plan, on_broker, self.options.policy, key)
        if shaped.refused:
            for line in shaped.refused:
                complain(PUBLISH, line)
            return fail(PUBLISH, "nothing published")
        blocked = preflight.check(self.options.preflight, the_plan, self.fleet, on_broker)
        if blocked is not None:
            return fail(PUBLISH, blocked)
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
            return fail(PUBLISH, str(exc))
        except plan.VersionJumpError as exc:
            for line in exc.lines:
                complain(PUBLISH, line)
            return fail(
                PUBLISH,
                "refusing to continue from these versions: a key that signs them leaked, or a "
                "publisher issued them in error. Check, then rerun with --accept-version-jump "
                "to adopt them; nothing published",
            )

    def _watch(self, shaped: rollout_publish.Shaped) -> Watch | int:
        """The agents' reports, read on this session (a second one as this identity would
        close the first), or the exit code when no canary can go out."""
        watch = Watch(self.session, self.prefix, self.keys.trust, self.record)
        try:
            watch.start(self.options.timeout_s)
        except broker_io.BrokerError as exc:
            watch.close()
            return fail(PUBLISH, f"cannot read the agents' reports for the canary: {exc}", 1)
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
            return fail(PUBLISH, "nothing published")
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
            return fail(PUBLISH, f"cannot write the state file {self.record.path}: {exc}")

        results = broker_io.publish_retained(
            self.session, [(c.topic, c.payload) for c in to_send], self.options.timeout_s
        )
        by_topic = {r.topic: r for r in results}
        failed = 0
        for change in to_send:
            result = by_topic[change.topic]
            if result.ok:
                print(output.did(change))
            else:
                failed += 1
                log.error("%s %s: %s (%s)", change.kind, change.ident, result.reason, change.topic)
        sent = len(to_send) - failed
        print(output.run_summary(the_plan, sent, failed, self.session.version_name))
        return 1 if failed else 0

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
