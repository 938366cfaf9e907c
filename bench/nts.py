"""Figure: one sync with NTS. A whole `clockfleet agent --once` process whose list names an
NTS server (every run a fresh process: NTS-KE handshake included), beside `chronyd -Q` doing
the same against the same chronyd NTS server in the same run; and in process, one probe()
with its handshake, a resync with a kept cookie (no handshake), and the same server asked in
plain NTP."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.agentproc import REGION, agent_argv, agent_env
from bench.listpub import PREFIX, ListPublisher
from bench.results import figure, row
from bench.stack import Bench, median, timed_run

KEY = "nts"
HELP = "whole `agent --once` with NTS (handshake included) vs chronyd -Q with NTS; resync"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=5, help="process runs of each client (5)")
    p.add_argument("--probes", type=int, default=100, help="in-process calls of each (100)")


def chronyd_nts_query(rundir: Path, server: Any) -> float:
    """One `chronyd -Q` with NTS against `server`, a fresh dump directory each time (so it
    does NTS-KE, as our fresh process does); its wall time."""
    rundir.mkdir(parents=True)
    conf = rundir / "q.conf"
    conf.write_text(
        f"server {server.address} port {server.ntp_port} nts ntsport {server.ke_port} iburst "
        f"maxsamples 1\nntstrustedcerts {server.pki.ca_cert}\nntsdumpdir {rundir}\n"
        f"cmdport 0\npidfile {rundir}/q.pid\n"
    )
    t0 = time.monotonic()
    out = subprocess.run(
        ["chronyd", "-u", "root", "-Q", "-f", str(conf), "-t", "10"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    wall = time.monotonic() - t0
    if "System clock wrong by" not in out.stdout + out.stderr:
        raise RuntimeError(f"chronyd -Q with NTS did not sync: {out.stdout}{out.stderr}")
    return wall


def publish_nts_list(pub: ListPublisher, server: Any) -> None:
    entry = {"host": server.address, "port": 123, "nts": True, "nts_ke_port": server.ke_port}
    obj = {
        "schema": "clock.servers/2",
        "region": REGION,
        "version": 1,
        "issued_at": datetime.now(UTC).isoformat(),
        "servers": [entry],
        "timezone": "UTC",
        "poll_interval_s": 3600,
        "resync_jitter_s": 0,
    }
    pub.publish_signed(f"{PREFIX}/regions/{REGION}/servers", obj)


def in_process(server: Any, probes: int) -> dict[str, list[float]]:
    """probe() with a handshake each time, with a kept cookie, and plain NTP, alternately."""
    from clockfleet.agent.probe import NtsProbe, ProbeSettings, probe
    from clockfleet.ntp.nts_exchange import NtsClient
    from clockfleet.ntp.nts_tls import NtsTrust

    trust = NtsTrust((str(server.pki.ca_cert),))
    target = [(server.address, 123)]
    kept = NtsProbe({target[0]: server.ke_port}, NtsClient(trust=trust))
    plain = [(server.address, server.ntp_port)]
    settings = ProbeSettings()
    probe(target, settings, nts=kept)  # warm-up, and the cookies the resyncs spend
    times: dict[str, list[float]] = {"handshake": [], "cookie": [], "plain": []}
    for _ in range(probes):
        fresh = NtsProbe({target[0]: server.ke_port}, NtsClient(trust=trust))
        for name, args in (("handshake", fresh), ("cookie", kept), ("plain", None)):
            t0 = time.perf_counter()
            result = probe(plain if args is None else target, settings, nts=args)
            times[name].append(time.perf_counter() - t0)
            if not result.ok:
                raise RuntimeError(f"{name} probe failed: {result.tried}")
    assert kept.client is not None and kept.client.jar.handshakes == 1, "a resync handshook"
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    from clockfleet.devstack.nts_server import make_test_pki, start_nts_server

    with Bench(KEY) as b:
        pki = make_test_pki(b.subdir("pki"))
        server = start_nts_server(b.subdir("nts"), pki)
        b.callback(server.stop)
        mosq = b.mosquitto()
        broker = f"mqtt://{mosq.host}:{mosq.port}"
        pub = ListPublisher(mosq.host, mosq.port, b.subdir("keys"))
        b.callback(pub.close)
        publish_nts_list(pub, server)
        pub.publish_profile("bench-nts", REGION)
        once_times, argv = [], []
        for i in range(args.runs + 1):  # the first run warms the page cache: not counted
            d = b.subdir(f"once{i}")
            argv = agent_argv(
                "bench-nts", broker, pub.pub_path, d / "state", d / "agent.yaml", once=True
            )
            argv += ["--nts-ca-file", str(pki.ca_cert)]
            seconds, out, rc = timed_run(argv, env=agent_env())
            report = json.loads(out.strip().splitlines()[-1]) if rc == 0 else {}
            if rc != 0 or report.get("tried", [{}])[0].get("auth") != "nts":
                raise RuntimeError(f"agent --once with NTS failed ({rc}): {out[-1500:]}")
            if i:
                once_times.append(seconds)
        chrony_times = [chronyd_nts_query(b.rundir / f"q{i}", server) for i in range(args.runs)]
        times = in_process(server, args.probes)
    return _figure(args, once_times, chrony_times, times, argv)


def _figure(
    args: argparse.Namespace,
    once_times: list[float],
    chrony_times: list[float],
    times: dict[str, list[float]],
    argv: list[str],
) -> dict[str, Any]:
    ms = {k: median(v) * 1000 for k, v in times.items()}
    rows = [
        row(
            f"whole `agent --once` with an NTS server (NTS-KE included), median of {args.runs}",
            "s",
            median(once_times),
            reference="chronyd -Q with nts, maxsamples 1, fresh ntsdumpdir (NTS-KE included)",
            reference_value=median(chrony_times),
        ),
        row(
            f"one probe() with NTS-KE and {4} authenticated samples, median of {args.probes}",
            "ms",
            ms["handshake"],
            reference="the same server's probe() in plain NTP",
            reference_value=ms["plain"],
        ),
        row(
            "a resync with kept cookies: one probe(), no handshake",
            "ms",
            ms["cookie"],
            reference="the same server's probe() in plain NTP",
            reference_value=ms["plain"],
        ),
    ]
    notes = [
        "agent --once runs (s): "
        + ", ".join(f"{t:.3f}" for t in once_times)
        + "; chronyd -Q with NTS: "
        + ", ".join(f"{t:.3f}" for t in chrony_times)
    ]
    return figure(
        KEY,
        "One sync with NTS",
        command="",
        rows=rows,
        method=[
            "one chronyd (-x) serving NTS-KE and NTP on 127.0.0.1 with a certificate of a "
            "test CA; a Mosquitto holding the signed, retained clock.servers/2 list naming it",
            f"agent --once, timed from spawn to exit: `{' '.join(argv)}` (a fresh process and "
            "state dir each run: its handshake is part of it; one warm-up run not counted)",
            "chronyd -u root -Q -f q.conf -t 10 with `server ADDR port P nts ntsport K iburst "
            "maxsamples 1`, `ntstrustedcerts CA` and a fresh `ntsdumpdir` per run (no cookies "
            "kept), timed from spawn to exit, in the same run",
            "in process, alternately: probe() with a fresh cookie jar (NTS-KE each time), "
            "probe() with the kept jar (a resync: cookies, no handshake; the jar counts one "
            "handshake in all), and probe() of the same chronyd in plain NTP",
        ],
        notes=notes,
    )
