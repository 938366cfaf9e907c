"""Which daemons follow a time-zone change by themselves, measured on Debian 12 under real
systemd (docs/timezones.md records a run and what follows for `zone_change_command`).

- Kamailio (Debian's `kamailio` 5.6, its own unit): a request route answers SIP OPTIONS on
  127.0.0.1 with the local time and zone its worker sees (`$timef(%H:%M %Z %z)`), asked
  with sipsak before the change, after `timedatectl set-timezone` (Europe/Dublin ->
  Asia/Kolkata) with nothing else done, after `systemctl reload` and after `systemctl
  restart`.
- cron (Debian's `cron`, `--cron`, about two minutes): a job at this minute's Dublin hour
  and one at Kolkata's; which one runs after the change, cron not restarted.

    python -m tests.hosts.daemon_zones [--cron]     # as root, with the engine of tests/hosts

The image is clockfleet-host:bookworm plus those packages (`docker build --network host`,
Debian's mirror). The container has host networking and no CAP_SYS_TIME: Kamailio listens
on a free loopback port, and the zone that changes is the container's own.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.hosts import hostkit

IMAGE = "clockfleet-daemons:bookworm"
# Kamailio's unit is disabled in the image: its packaged configuration would listen on every
# address of this machine (host networking). The test starts it with its own.
DOCKERFILE = """FROM clockfleet-host:bookworm
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \\
        --no-install-recommends kamailio sipsak cron \\
    && systemctl disable kamailio && rm -rf /var/lib/apt/lists/*
"""
KAMAILIO_CFG = """#!KAMAILIO
# A SIP server that tells the local time its worker process sees (tests/hosts/daemon_zones.py)
debug=1
log_stderror=no
children=2
disable_tcp=yes
auto_aliases=no
dns=no
rev_dns=no
listen=udp:127.0.0.1:{port}
loadmodule "kex.so"
loadmodule "ctl.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
modparam("ctl", "binrpc", "unix:/run/kamailio/kamailio_ctl")
request_route {{
    if (is_method("OPTIONS")) {{
        append_to_reply("X-Local-Time: $timef(%H:%M %Z %z) worker $pp\\r\\n");
        sl_send_reply("200", "OK");
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
"""
BEFORE, AFTER = "Europe/Dublin", "Asia/Kolkata"
ASKS = 4  # queries per step: Kamailio has two UDP workers, each with its own zone state


def build_image() -> str:
    hostkit.build_image("bookworm")
    r = subprocess.run(
        ["docker", "build", "--network", "host", "-q", "-t", IMAGE, "-"],
        input=DOCKERFILE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        raise hostkit.HostError(f"{IMAGE}: {r.stdout[-2000:]}{r.stderr[-2000:]}")
    return IMAGE


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Transcript:
    """Every command run inside the container and what it printed, in order."""

    lines: list[str] = field(default_factory=list)

    def run(self, host: hostkit.SystemdHost, command: str, shown: str | None = None) -> str:
        r = host.sh(command)
        out = r.out.strip()
        self.lines.append(f"# {shown or command}" + (f"   (exit {r.code})" if r.code else ""))
        self.lines.extend(f"  {line}" for line in out.splitlines())
        return out


@dataclass
class KamailioRun:
    steps: dict[str, set[str]]  # step -> the X-Local-Time answers seen
    reload_exit: int
    transcript: Transcript


def ask_kamailio(host: hostkit.SystemdHost, port: int, t: Transcript, step: str) -> set[str]:
    """The distinct answers of ASKS queries, as "HH:MM ZONE +hhmm worker PID"."""
    command = f"sipsak -vv -H 127.0.0.1 -s sip:probe@127.0.0.1:{port} | grep '^X-Local-Time'"
    seen: set[str] = set()
    for _ in range(ASKS):
        seen.update(re.findall(r"X-Local-Time: ([^\r\n]+)", host.sh(command).out))
    t.lines.append(f"# {step}: {command}   ({ASKS} times)")
    t.lines.extend(f"  X-Local-Time: {answer}" for answer in sorted(seen))
    return seen


def zones_seen(answers: set[str]) -> set[str]:
    """The "ZONE +hhmm" part of each answer, whichever worker gave it."""
    return {" ".join(a.split()[1:3]) for a in answers}


def measure_kamailio(host: hostkit.SystemdHost) -> KamailioRun:
    port = free_udp_port()
    t = Transcript()
    host.put("/etc/kamailio/kamailio.cfg", KAMAILIO_CFG.format(port=port))
    t.run(host, f"timedatectl set-timezone {BEFORE} && systemctl start kamailio")
    t.run(host, "dpkg-query -W kamailio sipsak tzdata libc6")
    steps = {"started in " + BEFORE: ask_kamailio(host, port, t, "started")}
    t.run(host, f"timedatectl set-timezone {AFTER} && date '+%H:%M %Z %z'")
    steps["zone changed, nothing else"] = ask_kamailio(host, port, t, "changed")
    reload = host.sh("systemctl reload kamailio 2>&1")
    t.lines.append(f"# systemctl reload kamailio   (exit {reload.code})")
    t.lines.extend(f"  {line}" for line in reload.out.strip().splitlines())
    t.run(host, "kamcmd system.listMethods | grep -ciE 'reload|zone|tz'")
    steps["after systemctl reload"] = ask_kamailio(host, port, t, "reloaded")
    t.run(host, "systemctl restart kamailio")
    steps["after systemctl restart"] = ask_kamailio(host, port, t, "restarted")
    return KamailioRun(steps, reload.code, t)


CRON_JOB = "#!/bin/sh\necho \"$1 $(date '+%H:%M:%S %Z')\" >> /var/log/zonejobs.log\n"


@dataclass
class CronRun:
    before: list[str]  # jobs run before the change
    after: list[str]  # jobs run after it, cron not restarted
    transcript: Transcript


def _jobs(host: hostkit.SystemdHost) -> list[str]:
    return host.sh("cat /var/log/zonejobs.log 2>/dev/null").out.strip().splitlines()


def measure_cron(host: hostkit.SystemdHost) -> CronRun:
    """About two minutes: cron looks at its tables once a minute."""
    t = Transcript()
    host.put("/usr/local/bin/mark", CRON_JOB, mode=0o755)
    t.run(host, f"timedatectl set-timezone {BEFORE}")
    # This hour and the one three minutes on, in each zone: a run that crosses an hour
    # still matches (the two zones' hours are 5 or 6 apart: the sets never meet).
    hours = "{ date +%H; date -d '+3 min' +%H; } | sort -u | paste -sd,"
    dublin = host.ok(hours).strip()
    kolkata = host.ok(f"export TZ={AFTER}; {hours}").strip()
    table = (
        f"* {dublin} * * * root /usr/local/bin/mark job-at-dublin-hours-{dublin}\n"
        f"* {kolkata} * * * root /usr/local/bin/mark job-at-kolkata-hours-{kolkata}\n"
    )
    host.put("/etc/cron.d/zonejobs", table)
    t.run(host, "cat /etc/cron.d/zonejobs; systemctl restart cron; dpkg-query -W cron")
    hostkit.wait_for(lambda: _jobs(host), 75, "cron's first run")
    before = _jobs(host)
    t.run(host, "cat /var/log/zonejobs.log", "before the change: cat /var/log/zonejobs.log")
    t.run(host, f"timedatectl set-timezone {AFTER}")
    hostkit.wait_for(lambda: len(_jobs(host)) > len(before), 75, "cron's run after the change")
    time.sleep(1)  # a second job of the same minute, if cron ran both
    after = _jobs(host)[len(before) :]
    t.run(host, "cat /var/log/zonejobs.log", "after the change: cat /var/log/zonejobs.log")
    return CronRun(before, after, t)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cron", action="store_true", help="cron too (about two minutes more)")
    args = p.parse_args(argv)
    problem = hostkit.engine_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    host = hostkit.SystemdHost(build_image(), "bookworm").start()
    try:
        kam = measure_kamailio(host)
        print("\n".join(kam.transcript.lines))
        for step, seen in kam.steps.items():
            print(f"kamailio {step}: {', '.join(sorted(zones_seen(seen)))}")
        if args.cron:
            cron = measure_cron(host)
            print("\n".join(cron.transcript.lines))
            print(f"cron before: {cron.before}\ncron after: {cron.after}")
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
