"""On a host, the agent's process has exactly its backend's privileges (docs/trust.md, "On a
host"), under real systemd on Debian 11, 12 and 13.

- For each backend (observe, system, chrony, timesyncd) the agent cannot start a transient
  unit, cannot touch another service (restart chronyd or timesyncd, stop journald, ask
  timedated or hostnamed for anything but the zone), cannot reach chronyd's command socket
  or write another daemon's configuration, and cannot gain a capability.
- The backend the generator grants is the one the agent runs, for agent.yaml files that a
  line pattern reads differently from YAML; a unit that grants another backend's privileges
  makes the agent refuse with one line.
- A write under /etc/clockfleet restarts the agent without a host-wide daemon-reload, unless
  the backend changed.

"The agent's context" is a twin of its unit: `systemctl cat clockfleet-agent.service` (the
packaged unit with the generator's drop-in, exactly as systemd loaded it) as a unit of its
own, only ExecStart replaced by the probe (Type=oneshot). So every property the agent has
applies to the probe: user, groups, capability sets, NoNewPrivileges, seccomp filter, the
sandbox, the environment. A test first shows the twin's credentials (/proc/self/status:
uids, gids, groups, every capability set, NoNewPrivs, Seccomp) equal the running agent's.
Each refusal has its control in the same module: the same probes in a twin with the old
timesyncd backend's drop-in (root without any capability) succeed, a transient unit with
every capability included, which is why that drop-in is gone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.hosts import hostkit
from tests.hosts.stack import Stack, configure

pytestmark = pytest.mark.slow

AGENT = "clockfleet-agent.service"
TWIN = "clockfleet-twin.service"
CREDENTIALS = (
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
)
CAP_SYS_TIME = 1 << 25
# What systemd (or polkit behind it) answers a caller it does not allow.
REFUSED = re.compile(
    r"Interactive authentication required|Access denied|Permission denied|"
    r"Read-only file system|Could not open connection|Operation not permitted"
)


@pytest.fixture(scope="module", params=hostkit.SUITES)
def host(request, images, debs) -> Iterator[hostkit.SystemdHost]:
    suite = request.param
    h = hostkit.SystemdHost(images(suite), suite).start()
    try:
        h.install(debs(suite))
        yield h
    finally:
        h.stop()


def status_fields(text: str) -> dict[str, str]:
    return {
        k: v.strip()
        for k, v in (line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    }


def journal_cursor(host: hostkit.SystemdHost) -> str:
    out = host.ok(f"journalctl -u {AGENT} -n 0 --show-cursor --no-pager")
    m = re.search(r"-- cursor: (\S+)", out)
    return m.group(1) if m else ""


def journal_since(host: hostkit.SystemdHost, cursor: str) -> str:
    after = f"--after-cursor='{cursor}'" if cursor else ""
    return host.sh(f"journalctl -u {AGENT} -o cat --no-pager {after}").out


def granted(host: hostkit.SystemdHost) -> str:
    env = host.unit("Environment")
    m = re.search(r"CLOCKFLEET_UNIT_BACKEND=(\S+)", env)
    return m.group(1) if m else ""


def reloads(host: hostkit.SystemdHost) -> int:
    """How many times systemd reloaded its units since boot ("Reloading." / "Reloading...")."""
    out = host.ok("journalctl _PID=1 -o cat --no-pager | grep -c '^Reloading\\.*$' || true")
    return int(out.strip() or 0)


def put_agent_yaml(host: hostkit.SystemdHost, text: str) -> None:
    host.put("/etc/clockfleet/agent.yaml.new", text, 0o640)
    host.ok(
        "chgrp clockfleet /etc/clockfleet/agent.yaml.new && "
        "mv /etc/clockfleet/agent.yaml.new /etc/clockfleet/agent.yaml"
    )


def agent_started(host: hostkit.SystemdHost, cursor: str) -> str | None:
    """The backend the agent started with after `cursor`, or the line it refused with."""
    text = journal_since(host, cursor)
    m = re.search(r"agent \S+ starting \(backend (\w+)\)", text)
    if m:
        return m.group(1)
    refusals = re.findall(r"^clockfleet agent: (.*)$", text, re.M)
    return refusals[-1] if refusals else None  # the latest start's


def switch_backend(host: hostkit.SystemdHost, stack: Stack, agent_id: str, backend: str) -> None:
    """agent.yaml names `backend`, as an operator writes it; wait for the agent to run it."""
    cursor = journal_cursor(host)
    before = host.sh("cat /etc/clockfleet/agent.yaml").out
    configure(host, stack, agent_id, backend=backend)
    if host.ok("cat /etc/clockfleet/agent.yaml") == before:
        # Nothing the agent reads changed, so the package leaves it running (apply-config):
        # restart it for a start line of its own.
        host.ok("systemctl restart clockfleet-agent")
    hostkit.wait_for(lambda: granted(host) == backend, 20, f"the unit to grant {backend}")

    def started_on_this_file() -> str | None:
        # configure() writes the password, CA and trust key before agent.yaml, and the
        # package may restart the agent on the first of them: on a new host that start reads
        # the package's example agent.yaml, which names no id. Not the start this waits for.
        started = agent_started(host, cursor)
        return None if started is not None and started.startswith("no agent id") else started

    started = hostkit.wait_for(started_on_this_file, 20, "the agent to start")
    if backend == "system":
        # A container never has CAP_SYS_TIME (the clock is this machine's): the unit asks for
        # it, systemd cannot grant it, and the agent says so. It chose `system` all the same.
        assert "backend system: system backend: this process lacks CAP_SYS_TIME" in started
    else:
        assert started == backend, journal_since(host, cursor)[-2000:]


def make_twin(host: hostkit.SystemdHost, extra: str = "") -> None:
    """clockfleet-twin.service: the agent's unit as loaded, running the probe script."""
    unit = host.ok(f"systemctl cat {AGENT}")
    unit += (
        "\n[Service]\nType=oneshot\nRestart=no\nExecStart=\n"
        "ExecStart=/bin/sh /usr/local/share/clockfleet-twin.sh\n"
        "StandardOutput=file:/run/clockfleet-twin.out\nStandardError=inherit\n" + extra
    )
    host.put(f"/etc/systemd/system/{TWIN}", unit)
    host.ok("systemctl daemon-reload")


def in_twin(host: hostkit.SystemdHost, script: str) -> str:
    # (not under /run: a tmpfs, which docker cannot write into)
    host.put("/usr/local/share/clockfleet-twin.sh", script)
    host.ok("rm -f /run/clockfleet-twin.out")
    host.sh(f"systemctl start {TWIN}", timeout_s=120)
    return host.ok("cat /run/clockfleet-twin.out")


PROBES = {
    # A transient unit is systemd's own: it would have every capability the host has.
    "transient unit": "systemd-run --wait --pipe -q -- grep CapEff /proc/self/status",
    "restart chronyd": "systemctl restart chrony.service",
    "restart timesyncd": "systemctl restart systemd-timesyncd.service",
    "stop journald": "systemctl stop systemd-journald.service",
    # timedated grants the agent the zone, nothing else. (Not `set-ntp`: in a container
    # timedated answers "NTP not supported" before it asks polkit, which proves nothing.)
    "set the RTC to local time": "timedatectl set-local-rtc 1",
    "rename the host": "hostnamectl set-hostname pwned",
    "chronyd's socket": "chronyc -h /run/chrony/chronyd.sock reload sources",
    "chrony.conf": "sh -c 'echo server 192.0.2.66 >> /etc/chrony/chrony.conf'",
    "timesyncd.conf.d": "sh -c 'echo NTP=192.0.2.66 > /etc/systemd/timesyncd.conf.d/x.conf'",
}


def probe_script(names: list[str]) -> str:
    lines = ["#!/bin/sh", "grep -E '^(Uid|Gid|Groups|Cap|NoNewPrivs|Seccomp)' /proc/self/status"]
    for name in names:
        lines.append(
            f'out=$({PROBES[name]} 2>&1 </dev/null); rc=$?; echo "== {name}: rc=$rc $out" '
            "| tr '\\n' ' '; echo"
        )
    return "\n".join(lines) + "\n"


def run_probes(host: hostkit.SystemdHost, names: list[str]) -> tuple[dict[str, str], dict]:
    out = in_twin(host, probe_script(names))
    results = {}
    for line in out.splitlines():
        m = re.match(r"== (.+?): rc=(\d+) (.*)$", line)
        if m:
            results[m.group(1)] = (int(m.group(2)), m.group(3))
    return status_fields(out), results


def probes_for(host: hostkit.SystemdHost) -> list[str]:
    """Every probe, but those of a daemon this host does not have (a restart of a missing
    unit is "not found" before polkit is asked; no chronyc): they would prove nothing."""
    names = list(PROBES)
    for unit, probes in (
        ("chrony.service", ["restart chronyd", "chronyd's socket"]),
        ("systemd-timesyncd.service", ["restart timesyncd"]),
    ):
        if host.unit("LoadState", unit) != "loaded":
            names = [n for n in names if n not in probes]
    return names


# agent.yaml files that the generator's old line pattern (sed on `^backend:`) read otherwise
# than YAML does, each with the backend the agent's own loader finds: (case, text, backend).
# The first two gave an `observe` agent CAP_SYS_TIME; the last gave it to an agent that
# refuses its own file. "{base}" is the host's own agent.yaml without its backend line.
ADVERSARIAL = [
    (
        "a quoted value spanning lines hides a backend line",
        '{base}backend: observe\nusername: "x\nbackend: system"\nusername: {id}\n',
        "observe",
    ),
    (
        "a quoted duplicate key overrides the first",
        "{base}backend: system\n'backend': observe\n",
        "observe",
    ),
    ("an anchor", "{base}backend: &b chrony\n", "chrony"),
    ("a merge key", "{base}<<: {{backend: timesyncd}}\n", "timesyncd"),
    ("a tag", "{base}backend: !!str chrony\n", "chrony"),
    ("a comment before the value", "{base}backend: # observe\n  system\n", "system"),
    ("a flow mapping", "{flow}", "chrony"),
    ("a value the agent refuses", '{base}backend: "system\n  tem"\n', None),
]


def base_yaml(stack: Stack, agent_id: str) -> str:
    text = hostkit.agent_yaml(agent_id, stack.url, extra={"ca_file": "/etc/clockfleet/ca.pem"})
    return "".join(line for line in text.splitlines(True) if not line.startswith("backend:"))


@pytest.mark.parametrize(
    ("text", "backend"), [c[1:] for c in ADVERSARIAL], ids=[c[0] for c in ADVERSARIAL]
)
def test_the_backend_the_generator_grants_is_the_one_the_agent_runs(host, stack, text, backend):
    import yaml

    agent_id = f"pbx-{host.suite}-gen"
    switch_backend(host, stack, agent_id, "observe")  # password, CA, trust key too
    base = base_yaml(stack, agent_id)
    flow = yaml.safe_dump({**yaml.safe_load(base), "backend": "chrony"}, default_flow_style=True)
    cursor = journal_cursor(host)

    put_agent_yaml(host, text.format(base=base, id=agent_id, flow=flow))

    started = hostkit.wait_for(lambda: agent_started(host, cursor), 20, "the agent's start")
    if backend is None:
        # Refused by the agent: the unit grants nothing, and the agent says why in one line.
        assert started == "backend 'system tem': must be one of observe, chrony, timesyncd, system"
        hostkit.wait_for(lambda: granted(host) == "observe", 20, "the observe unit")
        assert host.unit("ActiveState") == "failed"
        return
    assert granted(host) == backend
    if backend == "system":  # no CAP_SYS_TIME in a container: the agent chose system
        assert started.startswith("backend system: system backend: this process lacks CAP_SYS_TIME")
    else:
        assert started == backend


def test_an_agent_whose_unit_grants_another_backend_refuses_with_one_line(host, stack):
    agent_id = f"pbx-{host.suite}-gen"
    switch_backend(host, stack, agent_id, "observe")
    # Nobody applies the change (as if agent.yaml were edited with the path unit stopped, or
    # the generator could not run the loader at boot): the unit still grants observe.
    host.ok("systemctl stop clockfleet-agent-config.path")
    try:
        put_agent_yaml(host, base_yaml(stack, agent_id) + "backend: chrony\n")
        cursor = journal_cursor(host)

        host.ok(f"systemctl restart {AGENT}")

        hostkit.wait_for(lambda: host.unit("ActiveState") == "failed", 20, "the refusal")
        lines = [
            line
            for line in journal_since(host, cursor).splitlines()
            if line.startswith("clockfleet agent:")
        ]
        assert lines == [
            "clockfleet agent: backend 'chrony', but this unit was started with backend "
            "'observe''s privileges (agent.yaml changed since systemd last read it): run "
            "`systemctl daemon-reload` and start the agent again"
        ]
        assert host.unit("NRestarts") == "0"  # exit 2: not retried in a loop
        # The control: once systemd has read agent.yaml again, the same file runs.
        cursor = journal_cursor(host)
        host.ok(f"systemctl daemon-reload && systemctl restart {AGENT}")
        assert hostkit.wait_for(lambda: agent_started(host, cursor), 20, "a start") == "chrony"
        assert granted(host) == "chrony"
    finally:
        host.ok("systemctl start clockfleet-agent-config.path")


def test_a_write_under_etc_clockfleet_reloads_systemd_only_when_the_backend_changes(host, stack):
    agent_id = f"pbx-{host.suite}-gen"
    switch_backend(host, stack, agent_id, "observe")
    before = reloads(host)
    pid = host.main_pid()
    cursor = journal_cursor(host)

    # A new trust key file and agent.yaml (another log level), as configuration management
    # rewrites them: the agent restarts, systemd does not re-read every unit on the host.
    configure(host, stack, agent_id, extra={"log_level": "debug"})

    assert hostkit.wait_for(lambda: agent_started(host, cursor), 20, "a restart") == "observe"
    assert host.main_pid() not in (0, pid)
    assert reloads(host) == before
    # The control: a new backend needs new privileges, hence the generator, hence a reload.
    switch_backend(host, stack, agent_id, "chrony")
    assert reloads(host) > before


def test_a_root_unit_without_capabilities_still_gets_every_capability_over_dbus(host, stack):
    # The control for every refusal below, and the finding behind the timesyncd backend's
    # new drop-in: the old one ran the agent as root with an empty bounding set and
    # NoNewPrivileges, and such a process starts a transient unit with every capability.
    configure(host, stack, f"pbx-{host.suite}-priv")
    # (StateDirectory= and ConfigurationDirectory= reset: systemd would hand the agent's
    # directories to root.)
    make_twin(host, "User=root\nGroup=clockfleet\nStateDirectory=\nConfigurationDirectory=\n")

    status, results = run_probes(host, ["transient unit", "restart chronyd"])

    assert status["Uid"].split()[0] == "0"
    assert int(status["CapBnd"], 16) == int(status["CapEff"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    rc, out = results["transient unit"]
    assert rc == 0, out
    m = re.search(r"CapEff:\s+([0-9a-f]+)", out)
    assert m is not None and int(m.group(1), 16) != 0, out  # the container's whole set
    assert results["restart chronyd"][0] == 0, results["restart chronyd"]


@pytest.mark.parametrize("backend", ["observe", "system", "chrony", "timesyncd"])
def test_the_agent_cannot_start_a_transient_unit_touch_another_service_or_gain_a_capability(
    host, stack, backend
):
    agent_id = f"pbx-{host.suite}-priv"
    if backend == "timesyncd":
        # chrony and systemd-timesyncd conflict: the host moves to timesyncd (offline).
        host.ok(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            "/var/cache/clockfleet-image/systemd-timesyncd_*.deb 2>&1"
        )
    switch_backend(host, stack, agent_id, backend)
    make_twin(host)

    status, results = run_probes(host, probes_for(host))

    # The twin is the agent's context: the same credentials as the running agent.
    if backend != "system":  # (which cannot run here: no CAP_SYS_TIME in a container)
        pid = hostkit.wait_for(lambda: host.main_pid(), 15, "the agent's pid")
        agent = status_fields(host.ok(f"cat /proc/{pid}/status"))
        assert {k: status[k] for k in CREDENTIALS} == {k: agent[k] for k in CREDENTIALS}
    assert status["Uid"].split()[0] == host.ok("id -u clockfleet").strip()
    assert status["NoNewPrivs"] == "1"
    # No capability, ever: none in the bounding set (system: CAP_SYS_TIME alone), so no
    # exec can gain one; NoNewPrivileges stops set-uid programs too.
    allowed = CAP_SYS_TIME if backend == "system" else 0
    for key in ("CapBnd", "CapEff", "CapPrm", "CapAmb", "CapInh"):
        assert int(status[key], 16) & ~allowed == 0, (key, status[key])
    assert set(results) == set(probes_for(host))
    for name, (rc, out) in results.items():
        assert rc != 0 and REFUSED.search(out), f"{backend}: {name} was not refused: {out}"
    assert "CapEff" not in results["transient unit"][1]
