"""Property: any file gives a valid fleet or a clean error list, never an exception or a hang.

Hypothesis draws raw bytes, YAML-shaped text built from the fleet file's own keys (so the
validator's deeper paths are reached, not only the parser's), mutations of a good file, and
alias bombs. A clean error list is what `clockfleet publish` prints before it exits 2: at
least one line, each naming the file, each a single printable line of bounded length.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clockfleet.publisher import fleetfile, yaml_prescan
from tests.publisher.kit import FLEET

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

# Keys of the fleet file, so that drawn structures often look like a fleet.
KEYS = [
    "signing_key",
    "defaults",
    "regions",
    "agents",
    "us-east",
    "eu-west",
    "acme-01",
    "timezone",
    "servers",
    "host",
    "port",
    "region",
    "poll_interval_s",
    "resync_jitter_s",
    "<<",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.sampled_from(["ntp1.example.net", "192.0.2.1", "fe80::1%eth0", "UTC", "us-east"])
    | st.text(max_size=24)
)
yamlish = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=40,
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    # One directory for every example: hypothesis runs many examples per test function.
    with tempfile.TemporaryDirectory(prefix="cf-fleet-") as d:
        yield Path(d)


def load_bytes(scratch: Path, data: bytes) -> fleetfile.Fleet | list[str]:
    path = scratch / "fleet.yaml"
    path.write_bytes(data)
    try:
        return fleetfile.load(path)
    except fleetfile.FleetFileError as exc:
        errors = exc.errors
    assert errors, "an error without any line"
    for line in errors:
        assert line.startswith(str(path)), line
        assert "\n" not in line and line.isprintable(), repr(line)
        assert len(line) < 1000, line
    return errors


@PROPERTY
@given(st.binary(max_size=4096))
def test_any_bytes_give_a_fleet_or_clean_errors(scratch: Path, data: bytes):
    load_bytes(scratch, data)


@PROPERTY
@given(st.text(max_size=2048))
def test_any_text_gives_a_fleet_or_clean_errors(scratch: Path, text: str):
    load_bytes(scratch, text.encode("utf-8", "surrogatepass"))


@PROPERTY
@given(yamlish)
def test_any_yaml_structure_gives_a_fleet_or_clean_errors(scratch: Path, value: object):
    load_bytes(scratch, yaml.safe_dump(value, allow_unicode=True).encode())


@PROPERTY
@given(
    st.integers(min_value=0, max_value=len(FLEET)),
    st.integers(min_value=0, max_value=40),
    st.text(alphabet="&*!<>[]{}:,-?|#%'\"\\\n\t @`~x0123456789", max_size=24),
)
def test_a_good_file_cut_and_spliced_gives_a_fleet_or_clean_errors(
    scratch: Path, at: int, cut: int, junk: str
):
    load_bytes(scratch, (FLEET[:at] + junk + FLEET[at + cut :]).encode())


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(min_value=2, max_value=30), st.integers(min_value=4, max_value=40))
def test_an_alias_bomb_is_refused_fast(scratch: Path, width: int, depth: int):
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for n in range(1, depth):
        lines.append(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]")
    text = "\n".join(lines) + "\n" + FLEET
    # CPU time, not wall time: the bound is on the work a file costs, and other processes on
    # a loaded machine (two cores, other test runs) stretch the wall clock several times over.
    started = time.process_time()
    result = load_bytes(scratch, text.encode())
    elapsed = time.process_time() - started
    expanded = sum(width**n for n in range(1, depth + 1))
    took = f"{elapsed:.2f} s for width {width}, depth {depth} ({expanded:,} values)"
    if expanded > yaml_prescan.MAX_NODES:
        assert isinstance(result, list) and "aliases are expanded" in result[0]
        assert elapsed < 1.0, took  # refused from the event stream, before anything is built
    else:
        # Below the bound the file is built in full, as any file of that size would be (about
        # 1.5 us a value here): the cost grows with the expanded size and stops at the bound.
        assert elapsed < 1.0 + expanded / 250_000, took


@PROPERTY
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True),
        st.tuples(
            st.sampled_from(["UTC", "Europe/Dublin", "America/New_York"]),
            st.lists(
                st.tuples(
                    st.from_regex(r"[a-z][a-z0-9]{0,8}\.example\.net", fullmatch=True),
                    st.integers(min_value=1, max_value=65535),
                ),
                min_size=1,
                max_size=4,
                unique_by=lambda s: s[0],
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_a_valid_fleet_is_read_as_written(scratch: Path, regions: dict):
    """The other side of the property: the checks refuse nothing the contract allows."""
    doc = {
        "regions": {
            rid: {"timezone": tz, "servers": [{"host": h, "port": p} for h, p in servers]}
            for rid, (tz, servers) in regions.items()
        }
    }
    fleet = load_bytes(scratch, yaml.safe_dump(doc).encode())
    assert isinstance(fleet, fleetfile.Fleet), fleet
    assert {rid: [(s.host, s.port) for s in r.servers] for rid, r in fleet.regions.items()} == {
        rid: servers for rid, (_, servers) in regions.items()
    }
