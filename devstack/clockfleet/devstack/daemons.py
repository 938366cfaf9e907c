"""Child processes on loopback: chronyd and Prometheus, free ports, waiting for them.

chronyd serves NTP always with -x, so the machine's clock is never touched (optionally under
libfaketime with a known wrong clock); Prometheus runs the committed config. Each runs in a
run directory, on a free port, and is stopped again. Mosquitto is started by mosquitto.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class DaemonError(RuntimeError):
    pass


def free_port(host: str = LOOPBACK, kind: int = socket.SOCK_STREAM) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def stable_ports(n: int, taken: set[int] | None = None, host: str = LOOPBACK) -> list[int]:
    """n distinct free TCP ports below the kernel's ephemeral range (none in `taken`).

    A daemon restarted in a test binds its ports again; a port from the ephemeral range
    (what binding port 0 gives) may meanwhile be the source port of some client's outgoing
    connection (every agent reconnecting holds one), and the restart would fail with
    "address already in use".
    """
    taken = taken if taken is not None else set()
    low, _ = ephemeral_range()
    floor = 10000 if low > 12000 else 1024
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    out: list[int] = []
    for _ in range(1000 * n):
        if len(out) == n:
            return out
        port = random.randint(floor, low - 1)
        if port in taken:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        taken.add(port)
        out.append(port)
    if len(out) == n:
        return out
    raise DaemonError("no free loopback port below the ephemeral range")


def free_udp_port(host: str = LOOPBACK) -> int:
    return free_port(host, socket.SOCK_DGRAM)


def is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    log: Path
    port: int
    host: str = LOOPBACK
    files: dict[str, Path] = field(default_factory=dict)
    env: dict[str, str] | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown (no persistence flush)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def require(binary: str) -> str:
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if path is None:
        raise DaemonError(f"{binary} is not installed (make test / make demo install it as root)")
    return path


def wait_tcp(host: str, port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return True
        time.sleep(0.02)
    return False


def render(template: str, values: dict[str, str | int]) -> str:
    for k, v in values.items():
        template = template.replace(f"@{k}@", str(v))
    return template


def restart(d: Daemon, timeout: float = 10.0) -> Daemon:
    """Start the same daemon again with the same command line (after stop() or kill())."""
    out = open(d.log.parent / f"{d.name}.stdout", "ab")  # noqa: SIM115
    proc = subprocess.Popen(d.proc.args, stdout=out, stderr=subprocess.STDOUT, env=d.env)
    nd = Daemon(d.name, proc, d.log, d.port, d.host, d.files, d.env)
    if d.name == "mosquitto" and not wait_tcp(d.host, d.port, proc, timeout):
        raise DaemonError(f"{d.name} did not come back: {nd.log_tail()}")
    return nd


# --- chronyd as an NTP server -------------------------------------------------------------


def libfaketime_path() -> str | None:
    for p in (
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ):
        if Path(p).exists():
            return p
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["dpkg", "-L", "libfaketime"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.endswith("libfaketime.so.1"):
                return line
    return None


def ntp_query(host: str, port: int, timeout: float = 0.5) -> bytes | None:
    """One bare client packet; the raw answer or None. Only to see that a server is up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        nonce = int.from_bytes(os.urandom(8), "big")
        s.sendto(b"\x23" + b"\0" * 39 + struct.pack("!Q", nonce), (host, port))
        try:
            data, _ = s.recvfrom(512)
            return data
        except OSError:
            return None


def start_chronyd_server(
    rundir: Path,
    *,
    address: str = "127.0.0.2",
    port: int | None = None,
    stratum: int | None = 8,
    fake_offset_s: float | None = None,
    timeout: float = 10.0,
) -> Daemon:
    """chronyd serving NTP on address:port, never touching this machine's clock (-x).

    stratum None leaves out `local stratum`: the server then answers leap 3 (unsynchronised).
    fake_offset_s runs it under libfaketime with a clock that far off (server minus true).
    Each server wants its own loopback address: chrony keys sources by IP, not port.
    """
    binary = require("chronyd")
    rundir.mkdir(parents=True, exist_ok=True)
    os.chmod(rundir, 0o700)
    port = port or free_udp_port(address)
    lines = [
        f"port {port}",
        f"bindaddress {address}",
        "allow 127.0.0.0/8",
        "allow ::1",
        "cmdport 0",
        f"bindcmdaddress {rundir}/chronyd.sock",
        f"pidfile {rundir}/chronyd.pid",
        f"driftfile {rundir}/chronyd.drift",
    ]
    if stratum is not None:
        lines.append(f"local stratum {stratum}")
    conf = rundir / "chronyd.conf"
    conf.write_text("\n".join(lines) + "\n")
    env = dict(os.environ)
    if fake_offset_s is not None:
        lib = libfaketime_path()
        if lib is None:
            raise DaemonError("libfaketime is not installed (Debian package faketime)")
        env.update(
            LD_PRELOAD=lib,
            FAKETIME=f"{fake_offset_s:+f}s",
            FAKETIME_DONT_RESET="1",
            FAKETIME_NO_CACHE="1",
        )
    args = [binary, "-x", "-d", "-f", str(conf)]
    # One address family: with only an IPv4 bindaddress chronyd would also take the IPv6
    # wildcard ([::]:port), and with it the port on every address of this machine.
    args.append("-6" if ":" in address else "-4")
    if is_root():
        args += ["-u", "root"]
    log = rundir / "chronyd.log"
    out = open(log, "ab")  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    d = Daemon("chronyd", proc, log, port, address, {"conf": conf}, env)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if ntp_query(address, port, 0.1) is not None:
                return d
    except BaseException:
        d.stop()  # whatever went wrong while waiting, never leave an orphaned daemon
        raise
    d.stop()
    raise DaemonError(f"chronyd did not answer on {address}:{port}: {d.log_tail()}")


def silent_udp(address: str = "127.0.0.4") -> socket.socket:
    """A bound UDP socket that never answers: the client waits its whole timeout."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((address, 0))
    return s


# --- Prometheus ---------------------------------------------------------------------------


def start_prometheus(
    rundir: Path, config_text: str, *, port: int | None = None, timeout: float = 15.0
) -> Daemon:
    binary = require("prometheus")
    rundir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = rundir / "prometheus.yml"
    conf.write_text(config_text)
    log = rundir / "prometheus.log"
    out = open(log, "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={conf}",
            f"--storage.tsdb.path={rundir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    d = Daemon("prometheus", proc, log, port, LOOPBACK, {"conf": conf})
    if not wait_tcp(LOOPBACK, port, proc, timeout):
        d.stop()
        raise DaemonError(f"prometheus did not listen: {d.log_tail()}")
    return d
