"""The software version every program reports (the dispatcher's --version, each agent's
`software` in its status and reports). It lives in the protocol package because that is the
only code the three programs share; `clockfleet` itself is a namespace package spread over
source roots (see pyproject.toml), so no clockfleet/__init__.py may hold it."""

__version__ = "0.1.0"

# The day this version was released: a host whose clock reads a day or more before it is
# provably behind (agent/clockfleet/agent/clock_evidence.py). Set with every release.
RELEASED = "2026-12-07"
