"""One list of the roles: broker/clockfleet-identities' ROLES. The other broker scripts load it
from there (they run beside it on a broker host, where the clockfleet package need not be
installed), and so does the devstack; what cannot load it, the ACL and each role's NATS
permissions, is checked against it here (docs/decisions.md, "The roles: one list")."""

from __future__ import annotations

import re

import pytest

from clockfleet.devstack import mosquitto
from clockfleet.devstack.bridges import generator
from clockfleet.devstack.nats import SECURITY_TOOL
from tests.helpers import REPO

TOOL = mosquitto.script_module(mosquitto.IDENTITIES_TOOL, "clockfleet_identities")
SECURITY = mosquitto.script_module(SECURITY_TOOL, "clockfleet_make_security_conf")
ACL = (REPO / "broker" / "acl").read_text()


def acl_users() -> list[str]:
    return re.findall(r"^user (\S+)$", ACL, flags=re.MULTILINE)


def test_every_script_and_the_devstack_take_the_identities_tools_roles():
    assert TOOL.ROLES == ("publisher", "collector", "collector-2", "operator", "retire")
    assert SECURITY.ROLES == generator().ROLES == mosquitto.ROLES == TOOL.ROLES
    assert generator().WITNESS == TOOL.WITNESS


def test_the_acl_has_a_block_for_every_role_and_the_witness_and_no_other():
    assert acl_users() == [*TOOL.ROLES, TOOL.WITNESS]


@pytest.mark.parametrize("role", TOOL.ROLES)
def test_each_roles_acl_block_starts_by_denying_its_own_agent_subtree(role: str):
    block = ACL.split(f"\nuser {role}\n", 1)[1]
    assert block.splitlines()[0] == f"topic deny clock/v1/agents/{role}/#"


@pytest.mark.parametrize("role", TOOL.ROLES)
def test_each_role_has_nats_permissions_that_deny_its_own_agent_subtree(role: str):
    perms = SECURITY.role_permissions(role, "clock/v1")
    assert f"clock.v1.agents.{role}.>" in perms["subscribe"]["deny"]
    assert f"clock.v1.agents.{role}.>" in perms["publish"]["deny"] or perms["publish"] == {
        "deny": [">"]
    }
