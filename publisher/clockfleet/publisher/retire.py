"""`clockfleet retire AGENT_ID`: take a decommissioned host out of the fleet for good.

A stopped agent's retained status and report stay on the broker for ever, and only the agent
could overwrite them: the host stays on /metrics and its alerts (offline, stale report) fire
for ever. As the `retire` identity, this command

  1. reads what the broker retains on the agent's status and report (and shows it:
     --dry-run stops here and changes nothing);
  2. revokes the agent's identity by running --revoke-command, which must exit 0 only once
     the broker no longer takes it (see below): from then on the agent cannot log in, and
     a session it still has is closed without its will;
  3. clears the agent's status and report with empty retained messages, and reads them
     back to check;
  4. names what it leaves: the agent's profile is the publisher's (remove the agent from
     the fleet file and run `clockfleet publish --prune`).

It logs in as `retire` (the default --username), the one identity the broker lets write an
agent's status and report besides the agent itself; the operator may not (a thief of its
everyday secret could otherwise forge any agent's report). Keep the retire identity's
password only where hosts are decommissioned. With edge brokers, retire an agent on its edge
(--broker the edge): the bridge carries the clears to central, and a copy cleared on central
alone would come back from the edge at the bridge's next reconnect.

The collector drops an agent once its status and report are empty: its series leave
/metrics at the next scrape, and every alert keyed on them ends (docs/operations.md).

--revoke-command is a command line run without a shell, `{agent}` replaced by the agent's
id (env CLOCKFLEET_REVOKE_COMMAND). On the broker host of the shipped Mosquitto:

  clockfleet-identities --out /etc/mosquitto/clockfleet --revoke {agent} --yes
      --reload-pidfile /run/mosquitto/mosquitto.pid --confirm mqtt://127.0.0.1:1883

The revocation comes first: a connected agent could otherwise write its status or report
again after they were cleared. --no-revoke clears the topics only, for an identity already
revoked (or one that is kept on purpose).

Exit codes: 0 retired (or a dry run), 1 a step failed (the revocation, a clear refused or
not acknowledged, a topic still retained; the steps done are named), 2 a bad argument or an
unreachable broker.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
from dataclasses import dataclass

from clockfleet.protocol.connection import (
    UsageError,
    add_arguments,
    command_parser,
    settings_from_args,
)
from clockfleet.protocol.ids import ID_PATTERN, is_valid_id
from clockfleet.protocol.topics import profile_topic, report_topic, status_topic
from clockfleet.publisher import broker_io
from clockfleet.publisher.cli_common import Parser, fail, parse

RETIRE = "clockfleet retire"
# The identity broker/acl lets clear an agent's status and report (broker/clockfleet-identities
# makes it); the operator, whose connection file most commands read, may not.
IDENTITY = "retire"
NOT_ALLOWED = "operator"
NOT_ALLOWED_WHY = (
    f"the identity `{NOT_ALLOWED}` may not clear an agent's status and report: run as "
    f"`{IDENTITY}` (--username {IDENTITY} --password-file FILE, or a --connection file naming it)"
)
ENV_REVOKE = "CLOCKFLEET_REVOKE_COMMAND"
EXIT_FAILED = 1
REVOKE_TIMEOUT_S = 120.0


def parser() -> argparse.ArgumentParser:
    p = command_parser(RETIRE, __doc__.split("\n\n", 1)[1], parser_class=Parser)
    p.add_argument("agent", metavar="AGENT_ID", help="the agent to retire")
    p.add_argument("--dry-run", action="store_true", help="show what would be done, do nothing")
    p.add_argument(
        "--revoke-command",
        metavar="CMD",
        help=f"revokes the agent's identity; {{agent}} is its id (env {ENV_REVOKE})",
    )
    p.add_argument(
        "--no-revoke", action="store_true", help="only clear the topics (identity revoked already)"
    )
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0)
    add_arguments(p)
    return p


@dataclass(frozen=True)
class Plan:
    """What retiring one agent does: the revocation (None: --no-revoke), the topics to clear,
    and the retained topics left to others (topic -> why)."""

    agent: str
    revoke: list[str] | None
    clear: list[str]
    retained: dict[str, int]  # what the broker held before: topic -> payload size
    left: dict[str, str]


def revoke_words(template: str, agent: str) -> list[str]:
    """The command line, `{agent}` replaced in each word (no shell: nothing else expands)."""
    words = shlex.split(template)
    if not words:
        raise UsageError("--revoke-command is empty")
    return [w.replace("{agent}", agent) for w in words]


def make_plan(
    agent: str, prefix: str, retained: dict[str, bytes], revoke: list[str] | None
) -> Plan:
    held = {t: len(p) for t, p in retained.items() if p}
    profile = profile_topic(prefix, agent)
    # Named whether or not it is retained: the retire identity may not read it.
    left = {
        profile: (
            f"the publisher's: remove {agent} from the fleet file and run "
            "`clockfleet publish --prune`"
        )
    }
    # Status and report always: a message retained between the reading and the revocation
    # is cleared too (clearing what is not there costs one empty message).
    return Plan(
        agent, revoke, [status_topic(prefix, agent), report_topic(prefix, agent)], held, left
    )


def show(plan: Plan, dry_run: bool) -> None:
    print(f"{RETIRE} {plan.agent}{' (dry run: nothing is changed)' if dry_run else ''}")
    if plan.revoke is None:
        print("  revoke: no (--no-revoke)")
    else:
        print(f"  revoke: {shlex.join(plan.revoke)}")
    for topic in plan.clear:
        size = plan.retained.get(topic)
        held = f"retained, {size} bytes" if size is not None else "nothing retained"
        print(f"  clear:  {topic} ({held})")
    for topic, why in plan.left.items():
        print(f"  left:   {topic}: {why}")


def run_revoke(words: list[str]) -> str | None:
    """Run the revocation; None when it exited 0, else why not."""
    try:
        done = subprocess.run(words, timeout=REVOKE_TIMEOUT_S, check=False)
    except OSError as exc:
        return f"cannot run {words[0]}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return f"{words[0]} did not finish within {REVOKE_TIMEOUT_S:g} s"
    if done.returncode != 0:
        return f"{shlex.join(words)} exited {done.returncode}"
    return None


def read_agent_topics(
    session: broker_io.PublisherSession, prefix: str, agent: str, timeout_s: float
) -> dict[str, bytes]:
    """The agent's retained status and report now (a fresh SUBSCRIBE resends them; the
    snapshot ends at the session's fence)."""
    with session.lock:
        session.retained.clear()
    topics = [status_topic(prefix, agent), report_topic(prefix, agent)]
    why = f"cannot see what the broker retains for this agent (retire runs as `{IDENTITY}`)"
    broker_io.subscribe_checked(session, topics, timeout_s, why)
    broker_io.fence(session, timeout_s)
    session.client.unsubscribe(topics)
    with session.lock:
        return {t: p for t, p in session.retained.items() if p}


def clear(session: broker_io.PublisherSession, plan: Plan, prefix: str, timeout_s: float) -> int:
    """Empty retained messages on the plan's topics; then check that nothing is retained
    there any more."""
    results = broker_io.publish_retained(session, [(t, b"") for t in plan.clear], timeout_s)
    failed = [r for r in results if not r.ok]
    for r in results:
        print(f"cleared {r.topic}" if r.ok else f"NOT cleared {r.topic}: {r.reason}")
    still = read_agent_topics(session, prefix, plan.agent, timeout_s)
    stuck = sorted(t for t in still if t in plan.clear)
    for topic in stuck:
        print(f"still retained: {topic} (written again after the clear?)")
    for topic, why in plan.left.items():
        print(f"left {topic}: {why}")
    if failed or stuck:
        why = f"{plan.agent}: not every topic is clear (above)"
        if any(r.reason.startswith("refused") for r in failed):
            why += f"; may this identity clear them? retire runs as `{IDENTITY}`"
        return fail(RETIRE, why, EXIT_FAILED)
    revoked = "identity revoked, " if plan.revoke is not None else ""
    print(f"{plan.agent} retired: {revoked}retained status and report cleared")
    return 0


def main(argv: list[str]) -> int:
    args = parse(parser(), argv)
    if isinstance(args, int):
        return args
    agent: str = args.agent
    if not is_valid_id(agent):
        return fail(RETIRE, f"{agent!r} is not an agent id ({ID_PATTERN})")
    template = args.revoke_command or os.environ.get(ENV_REVOKE)
    if not template and not args.no_revoke:
        return fail(RETIRE, f"give --revoke-command (or {ENV_REVOKE}), or --no-revoke")
    try:
        settings = settings_from_args(args, {"username": IDENTITY}, defaults_source="default")
        revoke = None if args.no_revoke else revoke_words(template or "", agent)
        as_operator = settings.username == NOT_ALLOWED
        if as_operator and not args.dry_run:
            return fail(RETIRE, f"{NOT_ALLOWED_WHY}; nothing was read, revoked or cleared")
        session = broker_io.open_session(settings, args.timeout)
    except (UsageError, broker_io.CannotConnect) as exc:
        return fail(RETIRE, str(exc))
    try:
        before = read_agent_topics(session, settings.prefix, agent, args.timeout)
        plan = make_plan(agent, settings.prefix, before, revoke)
        show(plan, args.dry_run)
        if args.dry_run:
            return fail(RETIRE, f"would fail: {NOT_ALLOWED_WHY}") if as_operator else 0
        if plan.revoke is not None:
            why = run_revoke(plan.revoke)
            if why is not None:
                return fail(RETIRE, f"{agent}: revocation failed, nothing cleared: {why}", 1)
            print(f"revoked {agent}")
        return clear(session, plan, settings.prefix, args.timeout)
    except broker_io.BrokerError as exc:
        return fail(RETIRE, f"{agent}: {exc}", EXIT_FAILED)
    finally:
        broker_io.close(session)
