"""`progan download` and progan_cli.download against a real HTTP server on 127.0.0.1 (no internet needed):
a checked download into the cache, the cache hit, a re-fetch of a damaged file, and the failures (truncated
transfer, wrong checksum, 404, refused connection, a server that stalls, Ctrl-C) each leaving nothing behind
and saying so in one line; the catalogue, its `--list` and the NVIDIA by-hand line."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import one_error_line
from progan_cli import pretrained
from progan_cli.cli.app import app
from progan_cli.download import download
from progan_cli.errors import DataError, UsageError
from progan_cli.files import cache_dir

BODY = bytes(range(256)) * 300  # 76.8 kB
DIGEST = hashlib.sha256(BODY).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        if self.path == "/x.pth":
            self._head(len(BODY))
            self.wfile.write(BODY)
        elif self.path == "/short.pth":  # promises more than it sends, then closes
            self._head(len(BODY) + 1000)
            self.wfile.write(BODY)
        elif self.path == "/stall.pth":  # half the body, then silence
            self._head(len(BODY))
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            time.sleep(1.5)
        else:
            self.send_error(404)

    def _head(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PROGAN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _run(*args):
    return CliRunner().invoke(app, ["download", *map(str, args)])


def _left(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_cache_dir_follows_progan_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROGAN_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("PROGAN_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "progan"


def test_url_into_the_cache_then_a_hit(server, cache):
    result = _run(f"{server}/x.pth", "--sha256", DIGEST.upper())
    assert result.exit_code == 0, result.output
    path = cache / "networks" / "x.pth"
    assert result.stdout.strip() == str(path)
    assert path.read_bytes() == BODY
    assert _left(cache) == [cache / "networks", path]

    hits = len(_Handler.hits)
    again = _run(f"{server}/x.pth", "--sha256", DIGEST, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == {"path": str(path), "url": f"{server}/x.pth", "name": None,
                                        "fetched": False, "bytes": len(BODY)}
    assert "already there" in again.stderr and len(_Handler.hits) == hits  # not fetched again


def test_a_damaged_cached_file_is_fetched_again(server, cache):
    path = cache / "networks" / "x.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(BODY[:100])
    result = _run(f"{server}/x.pth", "--sha256", DIGEST)
    assert result.exit_code == 0, result.output
    assert "wrong sha256" in result.stderr and path.read_bytes() == BODY


def test_out_and_overwrite(server, cache, tmp_path):
    out = tmp_path / "mine.pth"
    out.write_bytes(b"something of the user's")
    one_error_line(_run(f"{server}/x.pth", "--sha256", DIGEST, "--out", out), exit_code=2)
    assert out.read_bytes() == b"something of the user's"
    result = _run(f"{server}/x.pth", "--sha256", DIGEST, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and out.read_bytes() == BODY
    into = _run(f"{server}/x.pth", "--sha256", DIGEST, "--out", tmp_path)  # a folder: the URL's file name in it
    assert into.stdout.strip() == str(tmp_path / "x.pth") and (tmp_path / "x.pth").read_bytes() == BODY
    assert not list(tmp_path.glob("*.partial")) and not _left(cache)


def test_a_truncated_transfer_keeps_nothing(server, cache):
    line = one_error_line(_run(f"{server}/short.pth", "--sha256", DIGEST))
    assert f"broke off after {len(BODY)} of {len(BODY) + 1000} bytes" in line
    assert _left(cache) == [cache / "networks"]  # no file, no .partial


def test_a_wrong_checksum_keeps_nothing(server, cache):
    line = one_error_line(_run(f"{server}/x.pth", "--sha256", "0" * 64))
    assert f"expected {'0' * 64}, got {DIGEST}" in line
    assert _left(cache) == [cache / "networks"]


def test_http_404(server, cache):
    line = one_error_line(_run(f"{server}/gone.pth", "--sha256", DIGEST))
    assert "HTTP 404" in line and not _left(cache)


def test_a_refused_connection_fails_at_once_with_the_by_hand_hint(cache):
    port = _closed_port()
    start = time.monotonic()
    line = one_error_line(_run(f"http://127.0.0.1:{port}/x.pth", "--sha256", DIGEST))
    assert time.monotonic() - start < 2
    assert f"cannot reach 127.0.0.1:{port} (connection refused)" in line
    assert f"put it at {cache / 'networks' / 'x.pth'}" in line and not _left(cache)


def test_a_stalled_server_times_out(server, tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError, match=r"broke off after \d+ of \d+ bytes \(no answer in 0.3 s\)"):
        download(f"{server}/stall.pth", tmp_path / "s.pth", DIGEST, timeout=0.3)
    assert time.monotonic() - start < 1.2 and not _left(tmp_path)


def test_download_with_a_prefix_checksum(server, tmp_path):
    seen = []
    dest = download(f"{server}/x.pth", tmp_path / "sub" / "x.pth", DIGEST[:8],
                    on_progress=lambda done, total: seen.append((done, total)))
    assert dest == tmp_path / "sub" / "x.pth" and dest.read_bytes() == BODY
    assert seen[-1] == (len(BODY), len(BODY))
    with pytest.raises(DataError, match="a prefix"):
        download(f"{server}/x.pth", tmp_path / "y.pth", "deadbeef")
    with pytest.raises(UsageError):  # fewer than 8 digits proves nothing
        download(f"{server}/x.pth", tmp_path / "y.pth", DIGEST[:7])
    assert _left(tmp_path) == [tmp_path / "sub", dest]


def test_ctrl_c_leaves_nothing(server, tmp_path):
    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download(f"{server}/x.pth", tmp_path / "x.pth", DIGEST, on_progress=interrupt)
    assert _left(tmp_path) == []


def test_a_zoo_name_downloads_its_url(server, cache, monkeypatch):
    entry = pretrained.Pretrained("test-net", "gan-zoo", "test", 16, "net-" + DIGEST[:8] + ".pth", "BSD-3-Clause",
                                  f"{server}/x.pth", DIGEST[:8], None)
    monkeypatch.setattr(pretrained, "CATALOGUE", (entry,))
    result = _run("TEST-NET")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(pretrained.cached_path(entry)) == str(cache / "networks" / entry.file)
    assert pretrained.cached_path(entry).read_bytes() == BODY
    one_error_line(_run("test-net", "--sha256", DIGEST), exit_code=2)  # the catalogue has its checksum


def test_the_catalogue():
    cat = pretrained.CATALOGUE
    assert len(cat) == 35 and len({e.name.lower() for e in cat}) == 35
    nvidia = [e for e in cat if e.source == "nvidia"]
    zoo = [e for e in cat if e.source == "gan-zoo"]
    assert len(nvidia) == 31 and all(e.url is None and e.licence == "CC BY-NC 4.0" for e in nvidia)
    assert pretrained.find("LSUN-CAT-256").file == "karras2018iclr-lsun-cat-256x256.pkl"
    assert pretrained.find("celebahq-1024").resolution == 1024
    assert {e.name: e.resolution for e in zoo} == {"celebAHQ-256": 256, "celebAHQ-512": 512, "DTD": 128, "celeba": 128}
    for e in zoo:
        assert e.url.endswith(f"-{e.sha256}.pth") and len(e.sha256) == 8 and e.url.endswith(e.file)
    with pytest.raises(UsageError, match="lsun-tvmonitor-256"):
        pretrained.find("nope")


def test_list_and_json(cache):
    result = _run("--list")
    assert result.exit_code == 0, result.output
    rows = result.stdout.strip().splitlines()
    assert rows[0].split() == ["NAME", "SOURCE", "DATASET", "RES", "LICENCE", "CACHED"] and len(rows) == 36
    assert rows[1].split()[0] == "celebahq-1024" and rows[1].endswith("no")

    path = pretrained.cached_path(pretrained.find("celeba"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    doc = json.loads(_run("--list", "--json").stdout)
    assert len(doc["networks"]) == 35 and doc["cache"] == str(cache / "networks")
    by_name = {n["name"]: n for n in doc["networks"]}
    assert by_name["celeba"]["cached"] is True and by_name["DTD"]["cached"] is False
    assert by_name["celeba"]["sha256"] == "2b0acc76" and by_name["lsun-bedroom-256"]["url"] is None
    one_error_line(_run("celeba", "--list"), exit_code=2)


def test_an_nvidia_name_says_how_to_get_it_by_hand(cache):
    entry = pretrained.find("lsun-bedroom-256")
    line = one_error_line(_run("lsun-bedroom-256"))
    assert pretrained.NVIDIA_FOLDER in line and f"put it at {pretrained.cached_path(entry)}" in line
    pretrained.cached_path(entry).parent.mkdir(parents=True)
    pretrained.cached_path(entry).write_bytes(b"put there by hand")
    result = _run("lsun-bedroom-256")
    assert result.exit_code == 0 and result.stdout.strip() == str(pretrained.cached_path(entry))


@pytest.mark.parametrize("args", [["no-such-net"], [], ["http://127.0.0.1:9/x.pth"],
                                  ["http://127.0.0.1:9/x.pth", "--sha256", "xyz"], ["ftp://host/x.pth"],
                                  ["http://127.0.0.1:9/", "--sha256", DIGEST]])
def test_bad_options_exit_2(args, cache):
    one_error_line(_run(*args), exit_code=2)
    assert not _left(cache)
