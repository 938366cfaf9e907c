"""One NTS-KE session (RFC 8915 §4): TCP, TLS 1.3 with ALPN ntske/1, records, key export.

Blocking, bounded by one deadline: it runs on a worker thread (nts_exchange.py), never on an
agent's loop. The TLS library is pyOpenSSL, because the standard `ssl` module cannot export
keying material (RFC 5705), which is where NTS's two keys come from.

What a server must show before its answer is read:
- TLS 1.3 (older versions are refused by the context), and ALPN `ntske/1` agreed;
- a certificate chain to a CA the agent trusts (the system's store, plus `nts_ca_file`),
  valid at this host's clock, and naming the host as the list names it (a DNS name in the
  subjectAltName, `*.` only as a whole left-most label; an address literal as an IP entry;
  the subject's common name is not read, as browsers no longer do);
- a certificate refused only for its dates is verified again without them only when the
  caller brings evidence that this host's clock is behind (the agent's clock_evidence.py
  rule, the one the broker's certificate meets): the outcome says which happened.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import select
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

from clockfleet.ntp import nts_ke
from clockfleet.ntp.checks import Failure
from clockfleet.ntp.lookup import SockAddr, addresses, is_ip_literal

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (chrony's `nocerttimecheck`); pyOpenSSL names it not.
NO_CHECK_TIME = 0x200000
T = TypeVar("T")


@dataclass(frozen=True)
class NtsTrust:
    """The CAs an NTS-KE server's certificate may chain to."""

    ca_files: tuple[str, ...] = ()
    system: bool = True  # the system's CA store as well


@dataclass(frozen=True)
class NtsKeys:
    """What one NTS-KE session gave: keys, cookies, and where NTP goes."""

    c2s: bytes
    s2c: bytes
    cookies: tuple[bytes, ...]
    family: int
    ntp_address: SockAddr
    waived: Optional[str] = None  # the evidence on which the certificate's dates were waived


@dataclass(frozen=True)
class KeFailed:
    failure: Failure
    # Inside _session: the chain was refused. From key_exchange: refused for its dates
    # alone, with no evidence to waive them.
    dates_refused: bool = False


class _Timeout(Exception):
    pass


def key_exchange(
    host: str,
    ke_port: int,
    ntp_port: int,
    found: list[tuple[int, SockAddr]],
    trust: NtsTrust,
    timeout_s: float,
    clock_behind: Optional[str] = None,
) -> Union[NtsKeys, KeFailed]:
    """NTS-KE with host (its addresses `found`, as resolved for NTP) on ke_port. NTP then
    goes to the negotiated server and port, else to the KE server's address and ntp_port.
    `clock_behind`: why this host's clock is provably behind, if it is.

    A certificate OpenSSL refuses is tried once more without its dates (a handshake only, no
    request sent): passing then means the dates were its only fault, waived only with
    `clock_behind`. This takes no verify callback, which pyOpenSSL would build as executable
    memory that the agent's unit forbids (MemoryDenyWriteExecute)."""
    deadline = time.monotonic() + timeout_s
    waived = None
    result = _session(host, ke_port, found, trust, deadline, True)
    if isinstance(result, KeFailed) and result.dates_refused:  # refused by the chain check
        undated = _session(host, ke_port, found, trust, deadline, False, clock_behind is None)
        if undated is None:  # only the dates were wrong
            why = f"{result.failure.detail}: not valid at this host's clock"
            result = KeFailed(
                Failure("nts-bad-certificate", f"{why}, and nothing shows that clock is wrong"),
                True,
            )
        elif not isinstance(undated, KeFailed) or not undated.dates_refused:
            result, waived = undated, clock_behind  # a session, or another failure
        else:
            result = KeFailed(result.failure)  # refused for more than its dates
    if result is None or isinstance(result, KeFailed):
        assert result is not None
        return result
    keys, answer, peer = result
    return _ntp_address(keys, answer, peer, ntp_port, waived)


_Session = tuple[tuple[bytes, bytes], nts_ke.KeAnswer, tuple[int, SockAddr]]


def _session(
    host: str,
    ke_port: int,
    found: list[tuple[int, SockAddr]],
    trust: NtsTrust,
    deadline: float,
    check_dates: bool,
    handshake_only: bool = False,
) -> Union[_Session, KeFailed, None]:
    """One session; None when `handshake_only` and the handshake and name check passed.
    A refused chain is KeFailed with `dates_refused` set (the caller tells dates apart)."""
    from OpenSSL import SSL

    sock: Optional[socket.socket] = None
    last = KeFailed(Failure("unreachable", "NTS-KE: no address to connect to"))
    for family, sockaddr in found:
        try:
            sock = _connect(family, (sockaddr[0], ke_port, *sockaddr[2:]), deadline)
            break
        except _Timeout:
            return _timed_out(deadline)
        except ConnectionRefusedError:
            last = KeFailed(Failure("nts-ke-refused", f"NTS-KE port {ke_port}: connection refused"))
        except OSError as e:
            last = KeFailed(Failure("unreachable", f"NTS-KE: cannot connect: {e.strerror or e}"))
    if sock is None:
        return last
    try:
        conn = SSL.Connection(_context(trust, check_dates), sock)
        if not is_ip_literal(host):
            conn.set_tlsext_host_name(host.encode("ascii", "replace"))
        conn.set_connect_state()
        return _talk(conn, sock, host, deadline, handshake_only)
    except _Timeout:
        return _timed_out(deadline)
    except SSL.Error as e:
        return _tls_failed(e)
    except OSError as e:
        return KeFailed(Failure("nts-ke-refused", f"NTS-KE: connection failed: {e}"))
    finally:
        sock.close()


def _talk(
    conn: Any, sock: socket.socket, host: str, deadline: float, handshake_only: bool
) -> Union[_Session, KeFailed, None]:
    from OpenSSL import SSL

    _until(deadline, sock, conn.do_handshake)
    if conn.get_alpn_proto_negotiated() != nts_ke.ALPN:
        return KeFailed(Failure("nts-ke-refused", "NTS-KE: the server did not agree to ntske/1"))
    cert = conn.get_peer_certificate(as_cryptography=True)
    problem = "no certificate" if cert is None else name_problem(cert, host)
    if problem is not None:
        return KeFailed(Failure("nts-bad-certificate", f"NTS-KE certificate: {problem}"))
    if handshake_only:
        return None
    request = nts_ke.request()
    sent = 0
    while sent < len(request):
        sent += _until(deadline, sock, functools.partial(conn.send, request[sent:]))
    answer = b""
    complete: Union[bool, nts_ke.KeRefusal] = False
    while complete is False:
        try:
            answer += _until(deadline, sock, lambda: conn.recv(4096))
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return KeFailed(Failure("nts-ke-refused", "NTS-KE: connection closed mid-answer"))
        complete = nts_ke.message_complete(answer)
    if isinstance(complete, nts_ke.KeRefusal):
        return KeFailed(Failure("nts-ke-refused", f"invalid NTS-KE answer: {complete.detail}"))
    parsed = nts_ke.parse_answer(answer)
    if isinstance(parsed, nts_ke.KeRefusal):
        outcome = "nts-no-cookies" if parsed.no_cookies else "nts-ke-refused"
        return KeFailed(Failure(outcome, f"NTS-KE answer: {parsed.detail}"))  # type: ignore[arg-type]
    keys = tuple(
        conn.export_keying_material(
            nts_ke.EXPORTER_LABEL, nts_ke.KEY_LENGTH, nts_ke.exporter_context(s2c)
        )
        for s2c in (False, True)
    )
    peer = sock.getpeername()
    _close_quietly(conn)
    return (keys[0], keys[1]), parsed, (sock.family, peer)


def _ntp_address(
    keys: tuple[bytes, bytes],
    answer: nts_ke.KeAnswer,
    peer: tuple[int, SockAddr],
    ntp_port: int,
    waived: Optional[str],
) -> Union[NtsKeys, KeFailed]:
    """Where NTP goes: the negotiated server (preferring the KE server's address family, as
    chrony does) or the KE server's own address; the negotiated port or the list's."""
    from clockfleet.protocol.ids import host_problem

    port = answer.port or ntp_port
    family, sockaddr = peer[0], (peer[1][0], port, *peer[1][2:])
    if answer.server is not None:
        problem = host_problem(answer.server)
        if problem is not None:
            return KeFailed(Failure("nts-ke-refused", f"NTS-KE named NTP server: {problem}"))
        found = addresses(answer.server, port)
        if isinstance(found, str):
            return KeFailed(Failure("unresolvable", f"NTS-KE named NTP server: {found}"))
        same = [a for a in found if a[0] == family]
        family, sockaddr = (same or found)[0]
    return NtsKeys(keys[0], keys[1], answer.cookies, family, sockaddr, waived)


# Loading the system's CA store costs tens of milliseconds: one context per trust and mode,
# shared by every handshake of the process (OpenSSL contexts are safe to share).
@functools.lru_cache(maxsize=16)
def _context(trust: NtsTrust, check_dates: bool) -> Any:
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_alpn_protos([nts_ke.ALPN])
    if trust.system:
        ctx.set_default_verify_paths()
    for ca_file in trust.ca_files:
        ctx.load_verify_locations(ca_file)
    if not check_dates:
        store = ctx.get_cert_store()
        assert store is not None
        store.set_flags(NO_CHECK_TIME)

    ctx.set_verify(SSL.VERIFY_PEER)  # no Python callback: see key_exchange
    return ctx


def _tls_failed(e: Exception) -> KeFailed:
    """A failed handshake: the chain refused (`dates_refused` set for key_exchange to tell
    the dates apart), or anything else the TLS layer refused."""
    reasons = " ".join(
        str(part) for arg in e.args for part in (arg if isinstance(arg, list) else [arg])
    )
    if "certificate verify failed" in reasons:
        return KeFailed(Failure("nts-bad-certificate", "NTS-KE certificate: verify failed"), True)
    return KeFailed(Failure("nts-ke-refused", f"NTS-KE TLS handshake failed: {e}"))


def _timed_out(deadline: float) -> KeFailed:
    return KeFailed(Failure("timeout", "NTS-KE: no answer in time"))


def _connect(family: int, sockaddr: SockAddr, deadline: float) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.connect(sockaddr)
    except socket.timeout:
        sock.close()
        raise _Timeout() from None
    except OSError:
        sock.close()
        raise
    # The request follows the handshake's last flight in a second small write: with Nagle's
    # algorithm it would wait for the server's delayed ACK (40 ms on Linux).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _until(deadline: float, sock: socket.socket, op: Callable[[], T]) -> T:
    """op() on a non-blocking TLS connection, waiting on the socket as OpenSSL asks."""
    from OpenSSL import SSL

    while True:
        try:
            return op()
        except SSL.WantReadError:
            events = select.POLLIN
        except SSL.WantWriteError:
            events = select.POLLOUT
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Timeout()
        poller = select.poll()
        poller.register(sock.fileno(), events)
        if not poller.poll(left * 1000):
            raise _Timeout()


def _close_quietly(conn: Any) -> None:
    # The answer is in; how the server takes our goodbye does not matter.
    with contextlib.suppress(Exception):
        conn.shutdown()


def name_problem(cert: Any, host: str) -> Optional[str]:
    """Why the certificate does not name `host`, or None when it does (RFC 6125 rules:
    subjectAltName only, a wildcard only as the whole left-most label)."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    if is_ip_literal(host):
        wanted = ipaddress.ip_address(host)
        if wanted in san.get_values_for_type(x509.IPAddress):
            return None
        return f"does not name the address {host}"
    name = host.rstrip(".").lower()
    for pattern in san.get_values_for_type(x509.DNSName):
        if dns_name_matches(pattern, name):
            return None
    return f"does not name {host}"


def dns_name_matches(pattern: str, name: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if not pattern.startswith("*."):
        return pattern == name
    first, _, rest = name.partition(".")
    return bool(first) and "." in pattern[2:] and rest == pattern[2:]
