"""`clockfleet collector`: agents' reports from MQTT as Prometheus metrics on /metrics."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from clockfleet.collector.http import parse_listen, serve
from clockfleet.collector.ingest import Collector
from clockfleet.collector.metrics import MetricsRenderer
from clockfleet.collector.ratelimit import DEFAULT_RATE_LIMIT, RateLimit
from clockfleet.protocol.connection import (
    BrokerUnreachable,
    UsageError,
    add_arguments,
    command_parser,
    settings_from_args,
)
from clockfleet.protocol.ids import ID_PATTERN, is_valid_id

DESCRIPTION = """\
Subscribe to every agent's retained report and status and to every region's published list,
and serve them as Prometheus metrics on http://LISTEN/metrics (clockfleet_agent_*,
clockfleet_region_*, clockfleet_collector_*).

Every message is decoded strictly; a bad one is logged (rate-limited), counted in
clockfleet_collector_messages_rejected_total{reason} and never replaces an agent's last good
values. Retained state is read at QoS 0, so a restarted collector knows the whole fleet at
once, even on a Mosquitto with default queue limits. A topic flooded faster than the rate
limit (per topic: --rate-limit-burst at once, --rate-limit-per-s sustained) has the excess
dropped before decoding and counted in clockfleet_collector_messages_dropped_total{reason};
a retained snapshot (one message per topic) is never limited. An unexpected error while
handling a message is counted in clockfleet_collector_handler_errors_total and logged, and
the collector goes on. On broker loss the collector keeps
serving the last known state and reconnects with jittered backoff, rotating through the
--broker list. Exits 2 on a bad argument or when no broker answers at start.

Sharding (--region, repeatable): this collector serves only the agents whose latest report
names one of these regions, and only these regions' lists; several collectors, each given
its own regions, split a large fleet. Report topics name no region, so every collector still
receives every report: the others are skipped before decoding (counted in
clockfleet_collector_messages_dropped_total{reason="other-region"}). docs/capacity.md says
what that saves and costs.
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("clockfleet collector", DESCRIPTION)
    p.add_argument(
        "--listen",
        default="127.0.0.1:9108",
        metavar="HOST:PORT",
        help="address to serve /metrics on, and only that one (default 127.0.0.1:9108; "
        "[::1]:PORT for IPv6)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default info)",
    )
    p.add_argument(
        "--rate-limit-burst",
        type=int,
        default=DEFAULT_RATE_LIMIT.burst,
        metavar="N",
        help=f"messages one topic may send at once (default {DEFAULT_RATE_LIMIT.burst})",
    )
    p.add_argument(
        "--rate-limit-per-s",
        type=float,
        default=DEFAULT_RATE_LIMIT.per_s,
        metavar="R",
        help=f"messages a second one topic may send sustained (default "
        f"{DEFAULT_RATE_LIMIT.per_s:g}; 0 turns the limit off)",
    )
    p.add_argument(
        "--region",
        action="append",
        metavar="REGION",
        help="serve only this region's agents and list (repeatable); default: every region",
    )
    add_arguments(p)
    return p


def regions_from_args(args: argparse.Namespace) -> frozenset[str] | None:
    if not args.region:
        return None
    bad = [r for r in args.region if not is_valid_id(r)]
    if bad:
        raise UsageError(f"--region {bad[0]!r}: a region id matches {ID_PATTERN}")
    return frozenset(args.region)


def rate_limit_from_args(args: argparse.Namespace) -> RateLimit | None:
    if args.rate_limit_per_s == 0:
        return None
    try:
        return RateLimit(args.rate_limit_burst, args.rate_limit_per_s)
    except ValueError:
        raise UsageError(
            "--rate-limit-burst must be at least 1 and --rate-limit-per-s positive (or 0: off)"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        host, port = parse_listen(args.listen)
        settings = settings_from_args(args)
        rate_limit = rate_limit_from_args(args)
        regions = regions_from_args(args)
    except (ValueError, UsageError) as exc:
        print(f"clockfleet collector: {exc}", file=sys.stderr)
        return 2
    collector = Collector(settings, rate_limit=rate_limit, regions=regions)
    try:
        collector.start()
    except BrokerUnreachable as exc:
        print(f"clockfleet collector: no broker reachable: {exc}", file=sys.stderr)
        return 2
    try:
        server, _ = serve(host, port, MetricsRenderer(collector.state, collector.link).render)
    except OSError as exc:
        collector.stop()
        print(f"clockfleet collector: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("clockfleet.collector").info(
        "serving http://%s:%d/metrics for %s",
        host,
        server.server_port,
        f"regions {', '.join(sorted(regions))}" if regions else "every region",
    )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    collector.stop()
    server.shutdown()
    return 0
