"""The version of clockfleet, as the dispatcher and every report and status show it.

`clockfleet` is a namespace package spread over source roots (`.` holds the dispatcher and
the protocol, `agent/`, `collector/` and `publisher/` hold one program each): no source root
may hold a `clockfleet/__init__.py`, so the version lives here.
"""

__version__ = "0.1.0"
