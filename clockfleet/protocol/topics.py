"""Topic names of the wire contract: building them and reading ids back out of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clockfleet.protocol.ids import is_valid_id

DEFAULT_PREFIX = "clock/v1"

Kind = Literal["servers", "profile", "status", "report", "cmd"]


def servers_topic(prefix: str, region: str) -> str:
    return f"{prefix}/regions/{region}/servers"


def profile_topic(prefix: str, agent: str) -> str:
    return f"{prefix}/agents/{agent}/profile"


def status_topic(prefix: str, agent: str) -> str:
    return f"{prefix}/agents/{agent}/status"


def report_topic(prefix: str, agent: str) -> str:
    return f"{prefix}/agents/{agent}/report"


def cmd_topic(prefix: str, agent: str) -> str:
    return f"{prefix}/agents/{agent}/cmd"


def all_servers_filter(prefix: str) -> str:
    return f"{prefix}/regions/+/servers"


def all_agents_filter(prefix: str, kind: Kind) -> str:
    return f"{prefix}/agents/+/{kind}"


@dataclass(frozen=True)
class TopicRef:
    kind: Kind
    ident: str  # the region for "servers", the agent for every other kind


class TopicError(ValueError):
    pass


def parse_topic(prefix: str, topic: str) -> TopicRef:
    """Split a topic into its kind and id; raise TopicError for anything off-contract."""
    if not topic.startswith(prefix + "/"):
        raise TopicError(f"topic {topic!r} is not under prefix {prefix!r}")
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) == 3 and parts[0] == "regions" and parts[2] == "servers":
        kind: Kind = "servers"
    elif (
        len(parts) == 3
        and parts[0] == "agents"
        and parts[2]
        in (
            "profile",
            "status",
            "report",
            "cmd",
        )
    ):
        kind = parts[2]  # type: ignore[assignment]
    else:
        raise TopicError(f"topic {topic!r} is not part of the contract")
    if not is_valid_id(parts[1]):
        raise TopicError(f"invalid id {parts[1]!r} in topic {topic!r}")
    return TopicRef(kind, parts[1])
