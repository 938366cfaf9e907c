"""Figure 6: what one `clockfleet agent` service costs its host while idle.

A real agent process with a long poll interval: once it has synced and reported, its RSS and
the CPU seconds it uses over the idle window (no polling loops: it should sleep until the
next timer) are read with psutil.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench.agentproc import DEPENDENCIES, REGION, agent_argv, agent_env
from bench.listpub import ListPublisher
from bench.results import figure, row
from bench.stack import Bench

KEY = "footprint"
HELP = "RSS and idle CPU of one `clockfleet agent` service process"
AGENT = "bench-idle"
RSS_GOAL_MB = 30.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="idle window, s (default 60)")


def wait_for_report(host: str, port: int, timeout: float) -> bool:
    """True once the agent's retained report is on the broker (it synced)."""
    got = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-footprint-watch")
    c.on_connect = lambda cl, *_: cl.subscribe(f"clock/v1/agents/{AGENT}/report", 1)
    c.on_message = lambda *_: got.set()
    c.connect(host, port)
    c.loop_start()
    try:
        return got.wait(timeout)
    finally:
        c.disconnect()
        c.loop_stop()


def biggest_mappings(ps: psutil.Process, top: int = 8) -> str:
    """Where the RSS lives: anonymous memory (Python objects) or which shared libraries."""
    by: dict[str, int] = {}
    for m in ps.memory_maps(grouped=True):
        name = m.path.rsplit("/", 1)[-1] or m.path
        by[name] = by.get(name, 0) + m.rss
    ranked = sorted(by.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{name} {rss / 2**20:.1f} MB" for name, rss in ranked)


def rss_of_imports(code: str) -> tuple[float, float]:
    """(RSS, USS) in MB of a fresh interpreter that ran `code`: the floor under the agent."""
    probe = f"{code}\nimport psutil\nm = psutil.Process().memory_full_info()\nprint(m.rss, m.uss)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    rss, uss = out.stdout.split()
    return int(rss) / 2**20, int(uss) / 2**20


def run(args: argparse.Namespace) -> dict[str, Any]:
    with Bench(KEY) as b:
        chrony = b.chronyd()
        mosq = b.mosquitto()
        pub = ListPublisher(mosq.host, mosq.port, b.subdir("keys"))
        b.callback(pub.close)
        pub.publish_list(REGION, 1, [(chrony.host, chrony.port)], poll_interval_s=3600)
        d = b.subdir("agent")
        argv = agent_argv(
            AGENT, f"mqtt://{mosq.host}:{mosq.port}", pub.pub_path, d / "state",
            d / "agent.yaml", once=False,
        )  # fmt: skip
        log = open(d / "agent.log", "wb")  # noqa: SIM115 - closed by the ExitStack
        b.callback(log.close)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=agent_env())
        b.callback(lambda: proc.poll() is None and (proc.terminate(), proc.wait(10)))
        t_spawn = time.monotonic()
        if not wait_for_report(mosq.host, mosq.port, 30):
            raise RuntimeError(f"the agent never reported: {(d / 'agent.log').read_text()[-1500:]}")
        to_report = time.monotonic() - t_spawn
        ps = psutil.Process(proc.pid)
        time.sleep(1.0)  # let the report's PUBACK and the status file settle
        cpu0 = sum(ps.cpu_times()[:2])
        rss_peak = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            rss_peak = max(rss_peak, ps.memory_info().rss)
            time.sleep(min(5.0, args.seconds))
        window = time.monotonic() - t0
        cpu = sum(ps.cpu_times()[:2]) - cpu0
        info = ps.memory_full_info()
        biggest = biggest_mappings(ps)
        threads = ps.num_threads()
        ctx = ps.num_ctx_switches()
        proc.terminate()
        rc = proc.wait(10)
    bare_rss, bare_uss = rss_of_imports("pass")
    deps_rss, deps_uss = rss_of_imports(DEPENDENCIES)
    rows = [
        row(
            "agent RSS, idle after its first sync",
            "MB",
            max(rss_peak, info.rss) / 2**20,
            goal=RSS_GOAL_MB,
            reference="an interpreter that only imported paho, msgspec and PyNaCl",
            reference_value=deps_rss,
        ),
        row(
            "agent USS (memory only this process holds)",
            "MB",
            info.uss / 2**20,
            reference="the same dependencies-only interpreter",
            reference_value=deps_uss,
        ),
        row(
            f"agent CPU over {window:.0f} s idle",
            "s",
            cpu,
            goal=0.05 * window / 60,
            note=f"{100 * cpu / window:.3f} % of one core",
        ),
    ]
    return figure(
        KEY,
        "Footprint",
        command="",
        rows=rows,
        method=[
            "a real `clockfleet agent` service process (observe backend, trust key, start-up "
            "delay 0) against a bench Mosquitto whose retained list says poll_interval_s 3600",
            "measured after its first report reached the broker "
            f"({to_report:.2f} s after spawn): RSS (psutil, peak of samples every 5 s) and "
            "user+system CPU seconds over the idle window",
            "goal for idle CPU: 'about 0', read as at most 0.05 s per minute",
        ],
        notes=[
            f"USS {info.uss / 2**20:.1f} MB, {threads} threads, context switches "
            f"voluntary {ctx.voluntary} / involuntary {ctx.involuntary} in its lifetime; "
            f"exit code on SIGTERM {rc}",
            f"PSS {info.pss / 2**20:.1f} MB; resident by mapping: {biggest}",
            f"floors: a bare interpreter {bare_rss:.1f} MB RSS ({bare_uss:.1f} MB USS); with "
            f"paho, msgspec and PyNaCl imported {deps_rss:.1f} MB ({deps_uss:.1f} MB)"
            + (
                f"; the dependencies alone exceed the {RSS_GOAL_MB:g} MB RSS goal (RSS counts "
                "shared library pages: libssl, libcrypto, libsodium)"
                if deps_rss > RSS_GOAL_MB
                else ""
            ),
        ],
    )
