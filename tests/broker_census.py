"""How many of the brokers the test suite starts run the shipped configuration.

Every broker start goes through clockfleet.devstack (start_shipped_mosquitto, the NATS
cluster, the bridges), which records it, and an open broker must say why. This plugin
attributes each start to the test that caused it and prints the census at the end of the
run: the share on the shipped configuration, and every other start with its reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pytest

from clockfleet.devstack.mosquitto import STARTS, BrokerStart

_by_test: dict[str, list[BrokerStart]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    before = len(STARTS)
    yield
    if len(STARTS) > before:
        _by_test[item.nodeid] = STARTS[before:]


def census_lines() -> list[str]:
    starts = [s for started in _by_test.values() for s in started]
    if not starts:
        return []
    shipped = sum(s.shipped for s in starts)
    tests_open: dict[str, list[str]] = defaultdict(list)
    for nodeid, started in _by_test.items():
        for s in started:
            if not s.shipped:
                tests_open[f"{s.kind}: {s.why}"].append(nodeid)
    lines = [
        f"brokers started by {len(_by_test)} tests: {len(starts)}; "
        f"on the shipped configuration: {shipped} ({100 * shipped / len(starts):.1f} %)"
    ]
    if tests_open:
        lines.append("the others, each with the reason its test gives:")
        for why, nodeids in sorted(tests_open.items()):
            lines.append(f"  {len(nodeids):4d}  {why}")
            lines += [f"          {n}" for n in sorted(set(nodeids))[:3]]
            if len(set(nodeids)) > 3:
                lines.append(f"          ... and {len(set(nodeids)) - 3} more")
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = census_lines()
    if lines:
        terminalreporter.section("broker census")
        for line in lines:
            terminalreporter.write_line(line)
