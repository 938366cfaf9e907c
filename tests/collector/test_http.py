"""/metrics over HTTP: gzip-encoded for a client that asks for it, plain text otherwise."""

from __future__ import annotations

import gzip
import urllib.request
from collections.abc import Iterator

import pytest

from clockfleet.collector.http import serve

BODY = b"# HELP x y\n# TYPE x gauge\n" + b'x{agent="a"} 1.0\n' * 5000


@pytest.fixture
def url() -> Iterator[str]:
    server, _ = serve("127.0.0.1", 0, lambda: BODY)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()


def get(url: str, accept_encoding: str | None) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if accept_encoding is not None:
        request.add_header("Accept-Encoding", accept_encoding)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return dict(resp.headers), resp.read()


def test_metrics_are_gzip_encoded_for_a_client_that_accepts_gzip(url):
    headers, body = get(url, "gzip")  # what Prometheus sends
    assert headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(body) < len(BODY) // 10
    assert gzip.decompress(body) == BODY


def test_metrics_are_gzip_encoded_when_gzip_is_one_of_several_codings(url):
    headers, body = get(url, "deflate, GZIP;q=0.5, br")
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == BODY


def test_metrics_are_plain_text_for_a_client_that_does_not_ask_for_gzip(url):
    headers, body = get(url, None)
    assert "Content-Encoding" not in headers
    assert body == BODY


def test_metrics_are_plain_text_when_gzip_is_refused_with_q0(url):
    headers, body = get(url, "gzip;q=0, identity")
    assert "Content-Encoding" not in headers
    assert body == BODY


def test_metrics_responses_vary_by_accept_encoding(url):
    headers, _ = get(url, "gzip")
    assert headers["Vary"] == "Accept-Encoding"
