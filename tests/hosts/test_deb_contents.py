"""The agent package itself, without a container (issue 13, part 1): what it carries, how its
unit differs from the shipped one, the backends' drop-ins and root helpers, the grammar the
root helper accepts and postrm's undoing of its chrony.conf take-over, and lintian."""

from __future__ import annotations

import configparser
import importlib.machinery
import importlib.util
import re
import shutil
import subprocess
import types
from pathlib import Path

import pytest

from clockfleet.agent.backend_chrony import render_chrony_sources
from clockfleet.agent.backend_timesyncd import render_timesyncd_dropin
from tests.hosts import hostkit

REPO_UNIT = hostkit.REPO / "agent" / "clockfleet-agent.service"


def contents(deb: Path) -> list[str]:
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
    return [line.split()[5].removeprefix("./") for line in out.stdout.splitlines()]


def member(deb: Path, path: str) -> str:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    out = subprocess.run(
        ["tar", "-xO", f"./{path}"], input=tar.stdout, capture_output=True, check=True
    )
    return out.stdout.decode()


def service(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return dict(parser["Service"])


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_package_carries_the_agent_and_only_the_agents_dependencies(suite, debs):
    site = {
        p.split("/")[5]
        for p in contents(debs(suite))
        if p.startswith("opt/clockfleet-agent/lib/") and p.count("/") >= 5
    }
    modules = {name for name in site if not name.endswith((".dist-info", ".so"))}
    shipped = {p.split("/")[6] for p in contents(debs(suite)) if "/site-packages/clockfleet/" in p}

    assert modules >= {"clockfleet", "paho", "msgspec", "nacl", "yaml"}
    assert modules >= {"OpenSSL", "cryptography"}  # the nts extra (docs/nts.md)
    assert not modules & {"rich", "prometheus_client", "ntplib"}
    assert not shipped & {"publisher", "collector", "demo.py", "devstack.py"}
    assert "agent" in shipped


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_packaged_unit_differs_from_the_shipped_unit_in_path_capabilities_and_a_record(suite, debs):
    lib = "usr/lib" if suite == "trixie" else "lib"
    packaged = service(member(debs(suite), f"{lib}/systemd/system/clockfleet-agent.service"))
    shipped = service(REPO_UNIT.read_text())

    differs = {k for k in shipped.keys() | packaged.keys() if shipped.get(k) != packaged.get(k)}

    assert differs == {
        *("ExecStart", "CapabilityBoundingSet", "AmbientCapabilities", "Environment"),
        "ExecStartPre",
    }
    assert packaged["ExecStart"].startswith("/opt/clockfleet-agent/bin/clockfleet agent ")
    # Root records what this start reads, for apply-config; it never fails the start.
    assert packaged["ExecStartPre"] == "-+/usr/lib/clockfleet-agent/apply-config --record"
    assert packaged["CapabilityBoundingSet"] == packaged["AmbientCapabilities"] == ""
    # observe's privileges (none) until a backend's drop-in names another; the agent refuses
    # to run a backend its unit does not name.
    assert packaged["Environment"] == "CLOCKFLEET_UNIT_BACKEND=observe"


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_no_backend_runs_the_agent_as_another_user_or_as_root(suite, debs):
    files = contents(debs(suite))
    dropins = sorted(
        p
        for p in files
        if p.startswith("usr/share/clockfleet-agent/backends/") and p.endswith(".conf")
    )

    assert [p.rsplit("/", 1)[1] for p in dropins] == [
        "chrony.conf",
        "system.conf",
        "timesyncd.conf",
    ]
    for path in dropins:
        unit = service(member(debs(suite), path))
        backend = path.rsplit("/", 1)[1].removesuffix(".conf")
        # The agent keeps the packaged unit's user, clockfleet: never chronyd's, never root.
        assert not {"User", "Group", "SupplementaryGroups", "DynamicUser"} & unit.keys(), path
        assert unit["Environment"] == f"CLOCKFLEET_UNIT_BACKEND={backend}"
        caps = "CAP_SYS_TIME" if backend == "system" else None
        assert unit.get("CapabilityBoundingSet") == caps
        assert unit.get("AmbientCapabilities") == caps
        assert not any(k.startswith("ExecStart") for k in unit), path


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_the_root_helpers_have_root_and_at_most_dac_override(suite, debs):
    lib = "usr/lib" if suite == "trixie" else "lib"
    for backend, caps in (("chrony", "CAP_DAC_OVERRIDE"), ("timesyncd", "")):
        unit = service(
            member(debs(suite), f"{lib}/systemd/system/clockfleet-agent-{backend}.service")
        )
        assert unit["ExecStart"] == f"/usr/lib/clockfleet-agent/backend-apply {backend}"
        assert unit["User"] == "root"
        assert unit["CapabilityBoundingSet"] == caps
        assert unit["NoNewPrivileges"] == "yes"
        assert unit["ProtectSystem"] == "strict"
        assert unit["RestrictAddressFamilies"] == "AF_UNIX"
        path = member(debs(suite), f"{lib}/systemd/system/clockfleet-agent-{backend}.path")
        assert f"PathChanged=/var/lib/clockfleet/{backend}\n" in path


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_the_time_zone_grant_names_the_agents_user_only(suite, debs):
    if suite == "bullseye":
        text = member(
            debs(suite), "var/lib/polkit-1/localauthority/10-vendor.d/50-clockfleet-agent.pkla"
        )
        identities = re.findall(r"^Identity=(.*)$", text, re.M)
        assert identities == ["unix-user:clockfleet"]
    else:
        text = member(debs(suite), "usr/share/polkit-1/rules.d/50-clockfleet-agent.rules")
        assert re.findall(r'subject\.user === "([^"]+)"', text) == ["clockfleet"]
    assert "_chrony" not in re.sub(r"(?m)^\s*(#|//).*$", "", text)


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_package_depends_on_the_suites_own_python_and_polkit(suite, debs):
    out = subprocess.run(
        ["dpkg-deb", "-f", str(debs(suite)), "Depends"], capture_output=True, text=True
    )
    depends = {re.sub(r" \(.*\)", "", d.strip()) for d in out.stdout.split(",")}

    python = {"bullseye": "python3.9", "bookworm": "python3.11", "trixie": "python3.13"}[suite]
    polkit = "policykit-1" if suite == "bullseye" else "polkitd"
    assert {python, polkit, "systemd", "dbus", "adduser"} <= depends


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is not installed")
@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_lintian_finds_nothing_beyond_the_explained_overrides(suite, debs):
    r = subprocess.run(
        ["lintian", "--fail-on", "error,warning", str(debs(suite))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    tags = [line for line in r.stdout.splitlines() if re.match(r"^[EWI]: ", line)]

    assert r.returncode == 0 and not tags, r.stdout + r.stderr


def backend_apply() -> types.ModuleType:
    """packaging/debian/backend-apply, the root helper, as a module (it has no .py name)."""
    path = hostkit.REPO / "packaging/debian/backend-apply"
    loader = importlib.machinery.SourceFileLoader("backend_apply", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("servers", "options"),
    [
        ([("192.0.2.10", 123), ("ntp1.example.net", 1123)], "iburst"),
        ([("2001:db8::1", 123), ("::1", 65535)], "iburst minpoll 0 maxpoll 2"),
        ([(f"ntp{n}.example.net", 123) for n in range(64)], ""),
    ],
)
def test_the_root_helper_accepts_every_file_the_agent_renders(servers, options):
    helper = backend_apply()
    sources = render_chrony_sources(servers, servers[-1], options)
    dropin, _ = render_timesyncd_dropin(servers, servers[0])

    assert helper.check_chrony_sources(sources.encode()) == [h for h, _ in servers]
    helper.check_timesyncd_dropin(dropin.encode())  # raises Refused otherwise


@pytest.mark.parametrize(
    "text",
    [
        "pool 2.debian.pool.ntp.org iburst\n",  # only `server` lines
        "server 192.0.2.1 port 123 iburst\nallow all\n",
        "server -f port 123\n",  # an option, not a host
        "server 192.0.2.1 port 123 key /etc/shadow\n",
        "server 192.0.2.1 port 99999\n",
        "server 192.0.2.1 port 123",  # no final newline
        "server ntp\u00e9.example port 123\n",
        "# only a comment\n",
        "".join(f"server 192.0.2.{n} port 123\n" for n in range(65)),
    ],
)
def test_the_root_helper_refuses_any_other_sources_file(text):
    helper = backend_apply()

    with pytest.raises(helper.Refused):
        helper.check_chrony_sources(text.encode())


@pytest.mark.parametrize(
    "text",
    [
        "[Time]\nNTP=192.0.2.1\nFallbackNTP=192.0.2.66\n",
        "[Time]\nNTP=192.0.2.1\n[Time]\nNTP=192.0.2.2\n",
        "[Time]\nRootDistanceMaxSec=3600\nNTP=192.0.2.1\n",
        "NTP=192.0.2.1\n",
    ],
)
def test_the_root_helper_refuses_any_other_timesyncd_dropin(text):
    helper = backend_apply()

    with pytest.raises(helper.Refused):
        helper.check_timesyncd_dropin(text.encode())


def postrm_restore(path: Path) -> None:
    """Run postrm's own awk program (give_back_chrony_conf) on `path`."""
    postrm = (hostkit.REPO / "packaging/debian/postrm").read_text()
    program = re.search(r"awk -v mark=\"\$MARK\" '(.*?)' \"\$f\"", postrm, re.S)
    mark = re.search(r"^MARK='([^']*)'$", postrm, re.M)
    assert program and mark
    out = subprocess.run(
        ["awk", "-v", f"mark={mark.group(1)}", program.group(1), str(path)],
        capture_output=True,
        check=True,
    )
    path.write_bytes(out.stdout)


DEBIAN_CHRONY_CONF = (
    b"# Include configuration files found in /etc/chrony/conf.d.\n"
    b"confdir /etc/chrony/conf.d\n\n# Use Debian vendor zone.\n"
    b"pool 2.debian.pool.ntp.org iburst\n\n# Use time sources from DHCP.\n"
    b"sourcedir /run/chrony-dhcp\n\nsourcedir /etc/chrony/sources.d\n"
    b"keyfile /etc/chrony/chrony.keys\ndriftfile /var/lib/chrony/chrony.drift\n"
    b"makestep 1 3\n"
)


@pytest.mark.parametrize(
    "original",
    [
        DEBIAN_CHRONY_CONF,
        b"  Server 192.0.2.1 iburst\r\n\tpeer 192.0.2.2\npool\x0cx\nrefclock PHC /dev/ptp0\n",
        b"server a\n#clockfleet-agent#x keeps its own comment\n\n\n",
        b"",
    ],
)
def test_postrm_gives_back_what_the_helper_took_byte_for_byte(tmp_path, original):
    helper = backend_apply()
    conf = tmp_path / "chrony.conf"
    conf.write_bytes(original)
    helper.CHRONY_CONF, helper.CHRONY_CONFD = conf, tmp_path / "conf.d"

    assert helper.take_over_chrony_conf() is True
    taken = conf.read_bytes()
    assert helper.take_over_chrony_conf() is False  # idempotent: taken once
    postrm_restore(conf)

    assert b"sourcedir /etc/chrony/clockfleet\n" in taken
    assert not re.search(rb"(?m)^\s*(pool|server|peer|refclock)\s", taken.lower())
    assert conf.read_bytes() == original
