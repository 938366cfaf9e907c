"""NTS in the fleet file: `nts: true` (and `nts_ke_port`) on a server entry, checked, and the
region's list built as clock.servers/2 whenever it (or its canary) names an NTS server."""

from __future__ import annotations

from pathlib import Path

import pytest

from clockfleet.protocol.codec import decode, encode
from clockfleet.protocol.messages import Server, ServerList
from clockfleet.publisher.fleetfile import FleetFileError, ServerEntry, load
from clockfleet.publisher.wire_objects import region_object, seal, with_servers_schema


def fleet_file(tmp_path: Path, *entries: str) -> Path:
    path = tmp_path / "fleet.yaml"
    body = "".join(f"      - {e}\n" for e in entries)
    path.write_text("regions:\n  eu-west:\n    servers:\n" + body)
    return path


def errors(tmp_path: Path, *entries: str) -> list[str]:
    with pytest.raises(FleetFileError) as bad:
        load(fleet_file(tmp_path, *entries))
    return bad.value.errors


def test_nts_entries_load(tmp_path: Path) -> None:
    fleet = load(
        fleet_file(
            tmp_path,
            "{host: time.cloudflare.com, nts: true}",
            "{host: nts.example.net, nts: true, nts_ke_port: 4461}",
            "{host: 192.0.2.10}",
        )
    )
    assert fleet.regions["eu-west"].servers == (
        ServerEntry("time.cloudflare.com", 123, True),
        ServerEntry("nts.example.net", 123, True, 4461),
        ServerEntry("192.0.2.10"),
    )


@pytest.mark.parametrize(
    "entry, why",
    [
        ("{host: a.example.net, nts: 1}", "servers[0].nts: must be true or false"),
        ('{host: a.example.net, nts: "true"}', "servers[0].nts: must be true or false"),
        ("{host: a.example.net, nts_ke_port: 4460}", "nts_ke_port: only for an NTS server"),
        ("{host: a.example.net, nts: false, nts_ke_port: 4460}", "only for an NTS server"),
        ("{host: a.example.net, nts: true, nts_ke_port: 0}", "nts_ke_port: 0 is outside"),
        ("{host: a.example.net, nts: true, nts_ke_port: x}", "nts_ke_port: must be an integer"),
        ("{host: a.example.net, nts: true, ntsport: 4460}", "unknown key"),
    ],
)
def test_bad_nts_setting_is_an_error_with_its_path(tmp_path: Path, entry: str, why: str) -> None:
    found = errors(tmp_path, entry)
    assert any(why in e and "regions.eu-west.servers[0]" in e for e in found), found


def test_region_naming_an_nts_server_goes_out_as_servers_2(tmp_path: Path) -> None:
    fleet = load(fleet_file(tmp_path, "{host: a.example.net, nts: true}", "{host: 192.0.2.1}"))
    obj = region_object(fleet.regions["eu-west"])
    assert obj["schema"] == "clock.servers/2"
    assert obj["servers"] == [
        {"host": "a.example.net", "port": 123, "nts": True},
        {"host": "192.0.2.1", "port": 123},
    ]
    obj.update(version=1, issued_at="2026-12-07T00:00:00Z")
    sl, _ = decode(ServerList, seal("region", "eu-west", obj, None))
    assert sl.servers[0] == Server("a.example.net", 123, nts=True)


def test_region_without_nts_stays_servers_1(tmp_path: Path) -> None:
    fleet = load(fleet_file(tmp_path, "{host: 192.0.2.1}"))
    assert region_object(fleet.regions["eu-west"])["schema"] == "clock.servers/1"


def test_canary_adding_an_nts_server_makes_the_list_servers_2() -> None:
    obj = {
        "schema": "clock.servers/1",
        "servers": [{"host": "192.0.2.1", "port": 123}],
        "canary": {"servers": [{"host": "a.example.net", "port": 123, "nts": True}]},
    }
    assert with_servers_schema(obj)["schema"] == "clock.servers/2"  # type: ignore[arg-type]
    ended = {"schema": "clock.servers/2", "servers": [{"host": "192.0.2.1", "port": 123}]}
    assert with_servers_schema(ended)["schema"] == "clock.servers/1"  # type: ignore[arg-type]
    assert encode(ended)  # a plain dict still encodes
