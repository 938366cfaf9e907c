"""`python -m bench.profile_summary FILE [--top N] [--under SUBSTRING]`: the costliest
functions in a py-spy raw (folded) profile, by own time and by time including callees.

Profiles come from running a figure with BENCH_PROFILE_DIR=DIR set (bench.stack.Worker
attaches `py-spy record` to every worker process).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from collections.abc import Iterator
from pathlib import Path

_LINE = re.compile(r"\s*\(([^()]*):\d+\)$")


REPO = Path(__file__).resolve().parent.parent


def frame_name(frame: str) -> str:
    """'fn (path/to/file.py:12)' -> 'fn (where.py)': one entry per function, not per line.
    A file of this repository by its path in it (agent/clockfleet/agent/fleet.py), any other
    by its last two parts (mqtt/client.py)."""
    m = _LINE.search(frame)
    if not m:
        return frame.strip()
    path = m.group(1)
    short = repo_path(Path(path)) or "/".join(path.split("/")[-2:])
    return f"{frame[: m.start()].strip()} ({short})"


# Where the clockfleet namespace's parts live. py-spy names a file by its last parts only
# (agent/fleet.py for agent/clockfleet/agent/fleet.py), or by its import path
# (clockfleet/agent/fleet.py), as often as by its absolute path.
SOURCE_ROOTS = ("", "agent", "collector", "publisher", "devstack")
PREFIXES = [Path(root) / sub for root in SOURCE_ROOTS for sub in ("", "clockfleet")]


def repo_path(path: Path) -> str | None:
    """`path` as a path in this repository, or None for a file that is not one of its own."""
    if path.is_absolute():
        try:
            return str(path.resolve().relative_to(REPO))
        except (ValueError, OSError):
            return None
    for prefix in PREFIXES:
        if (REPO / prefix / path).is_file():
            return str(prefix / path)
    return None


def _scaffolding(frame: str) -> bool:
    """Frames every stack of a thread passes through: they say nothing about cost."""
    return frame.startswith("thread (") or any(
        part in frame for part in ("(threading.py)", "<frozen runpy>", "(futures/thread.py)")
    )


def folded(path: Path) -> Iterator[tuple[str, int]]:
    """(stack, samples) for each line of py-spy's folded output; nothing if it is unreadable."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack, int(count)


def summarise(path: Path, top: int = 15, under: str | None = None) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, n in folded(path):
        frames = [frame_name(f) for f in stack.split(";")]
        if under is not None and not any(under in f for f in frames):
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            if not _scaffolding(f):
                incl[f] += n
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples" + (f" under {under!r}" if under else "")]
    lines.append("  own time:")
    lines += [f"    {100 * n / total:5.1f} %  {f}" for f, n in own.most_common(top)]
    lines.append("  including callees:")
    lines += [f"    {100 * n / total:5.1f} %  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def shares(path: Path, needles: dict[str, str], under: str | None = None) -> dict[str, float]:
    """Fraction of samples whose stack passes through a frame containing each needle."""
    hits = dict.fromkeys(needles, 0)
    total = 0
    for stack, n in folded(path):
        if under is not None and under not in stack:
            continue
        total += n
        for label, needle in needles.items():
            if needle in stack:
                hits[label] += n
    return {label: hits[label] / total for label in needles} if total else {}


NO_FRAME = "no Python frame (native code, or waiting for the GIL)"


def layers(path: Path, rules: list[tuple[str, tuple[str, ...]]]) -> dict[str, float]:
    """Each sample counted once, under the first rule matching its innermost frame that any
    rule matches (leaf to root), else under "other": where the time goes, by layer.

    A rule is (label, substrings of a frame). py-spy's non-blocking samples can miss outer
    frames, so a layer is recognised by the frames nearest the leaf."""
    hits: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, n in folded(path):
        total += n
        frames = stack.split(";")
        label = "other" if len(frames) > 1 else NO_FRAME
        for frame in reversed(frames[1:]):
            found = next((lb for lb, needles in rules if any(x in frame for x in needles)), None)
            if found is not None:
                label = found
                break
        hits[label] += n
    return {label: n / total for label, n in hits.most_common()} if total else {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--under", help="only stacks through a frame containing this text")
    args = p.parse_args()
    for f in args.files:
        print(summarise(f, args.top, args.under))
    return 0


if __name__ == "__main__":
    sys.exit(main())
