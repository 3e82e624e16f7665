"""Fetching by URL or path with sha256 verification: file://, a local HTTP server, plain paths."""

import hashlib
import http.server
import threading
from functools import partial

import pytest

from cmt.formats.fetch import FetchError, fetch

PAYLOAD = b"teacher weights " * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "teacher.safetensors"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


@pytest.fixture
def http_url(source):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(source.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_file_url_and_plain_path(tmp_path, source):
    for src in (source.as_uri(), str(source)):
        dest = tmp_path / "out" / "t.safetensors"
        assert fetch(src, SHA, dest).read_bytes() == PAYLOAD
        dest.unlink()


def test_http_download(tmp_path, http_url):
    dest = fetch(f"{http_url}/teacher.safetensors", SHA.upper(), tmp_path / "t.safetensors")
    assert dest.read_bytes() == PAYLOAD


def test_wrong_checksum_refused_and_nothing_left(tmp_path, source):
    out = tmp_path / "out"
    with pytest.raises(FetchError, match=f"sha256 mismatch for {source.as_uri()}.*expected {'0' * 64}"):
        fetch(source.as_uri(), "0" * 64, out / "t.safetensors")
    assert list(out.iterdir()) == []


def test_unreachable_sources_are_named(tmp_path, http_url):
    with pytest.raises(FetchError, match="missing.safetensors"):
        fetch(f"{http_url}/missing.safetensors", SHA, tmp_path / "a")
    with pytest.raises(FetchError, match="nowhere"):
        fetch(str(tmp_path / "nowhere"), SHA, tmp_path / "b")
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        fetch("ftp://example.org/x", SHA, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no partial downloads left
