"""What a `make demo` run is told by its environment (DEMO_FOR, DEMO_CHANGE_AFTER,
DEMO_RUNDIR; demo.py says what each means): checked, with the defaults filled in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clockfleet.demo_fleet import REPO


@dataclass
class Settings:
    run_for: float | None  # None: until Ctrl-C, with a live screen
    change_after: float
    rundir: Path

    @property
    def interactive(self) -> bool:
        return self.run_for is None


def seconds(env: dict[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"demo: {name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise SystemExit(f"demo: {name} must be more than 0 seconds")
    return value


def settings_from_env(env: dict[str, str]) -> Settings:
    run_for = seconds(env, "DEMO_FOR")
    change_after = seconds(env, "DEMO_CHANGE_AFTER")
    if change_after is None:
        change_after = 20.0 if run_for is None else min(20.0, 0.4 * run_for)
    if run_for is not None and change_after >= run_for:
        raise SystemExit(
            f"demo: DEMO_CHANGE_AFTER={change_after:g} must be less than DEMO_FOR={run_for:g}"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = REPO / "run" if (REPO / "pyproject.toml").exists() else Path.cwd() / "run"
    rundir = Path(env["DEMO_RUNDIR"]) if env.get("DEMO_RUNDIR") else base / f"demo-{stamp}"
    return Settings(run_for, change_after, rundir.resolve())
