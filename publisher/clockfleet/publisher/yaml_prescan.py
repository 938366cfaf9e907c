"""The YAML pre-scan: refuse a fleet file nested too deep or expanding too far, before any of
it is built.

Aliases let a 1 KB file stand for 10^9 nodes ("billion laughs"), and building values is
recursive. The bounds are far above any real fleet (100,000 agents is ~6 MB and ~600,000
nodes) and stop a hostile or broken file before it costs time or memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

# libyaml's parser where installed: the pure-Python one takes ~4 s for 5000 agents.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_DEPTH = 32
MAX_NODES = 1_000_000  # counted with every alias expanded


class _TooBig(Exception):
    pass


@dataclass(slots=True)
class _Open:
    """A collection the event stream is inside: its anchor, its expanded size so far."""

    anchor: str | None
    size: int = 1


def shape_problem(text: str) -> str | None:
    """Why the file's YAML is too deep or expands too far, from libyaml's event stream.

    The event parser is iterative and keeps no tree, so this costs one pass however hostile
    the file. An alias counts as the whole (expanded) node it refers to, so a billion-laughs
    file is refused after a few events. Syntax errors are left to the real load, which
    reports them with their line. The answer may quote an anchor name: print it escaped.
    """
    loader = LOADER(text)
    stack: list[_Open] = []
    sizes: dict[str, int] = {}
    total = 0

    def add(anchor: str | None, size: int) -> None:
        nonlocal total
        if anchor is not None:
            sizes[anchor] = size
        if stack:
            stack[-1].size += size
            size = stack[-1].size
        else:
            total += size
            size = total
        if size > MAX_NODES:
            raise _TooBig

    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    return f"nested more than {MAX_DEPTH} levels deep"
                stack.append(_Open(event.anchor))
            elif isinstance(event, yaml.CollectionEndEvent):
                closed = stack.pop()
                add(closed.anchor, closed.size)
            elif isinstance(event, yaml.ScalarEvent):
                add(event.anchor, 1)
            elif isinstance(event, yaml.AliasEvent):
                if any(o.anchor == event.anchor for o in stack):
                    return f"alias *{event.anchor} refers to a node that contains it"
                add(None, sizes.get(event.anchor, 1) if event.anchor is not None else 1)
    except _TooBig:
        return (
            f"more than {MAX_NODES:,} values once aliases are expanded "
            "(an alias bomb, or a file far larger than any fleet)"
        )
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return None
