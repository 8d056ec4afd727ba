"""Where the Inception weights come from when they are missing: the IS message says which file, where it goes
and how to fetch it; a download never hangs (a silent server, a trickling one)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from progan_cli.errors import DataError
from progan_cli.metrics import inception
from progan_cli.metrics.inception import ENV_WEIGHTS, PYTORCH_FID_FILE, PYTORCH_FID_URL, resolve_weights


def test_is_without_the_classifier_says_which_file_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub: a plain install
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    with pytest.raises(DataError) as info:
        resolve_weights(None, need_classifier=True, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert PYTORCH_FID_FILE in message  # which file
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message and "--weights" in message  # where
    assert f"curl -L -o {PYTORCH_FID_FILE} {PYTORCH_FID_URL}" in message  # how, on a machine with internet


class _Server:
    """A local HTTP server that accepts and then says nothing, or sends headers and one byte at a time."""

    def __init__(self, trickle: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/{PYTORCH_FID_FILE}"
        self.trickle, self.done = trickle, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            if self.trickle:
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000000\r\n\r\n")
                while not self.done.wait(0.05):
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        return
            else:
                self.done.wait(30)

    def close(self) -> None:
        self.done.set()
        self.sock.close()


@pytest.mark.parametrize("trickle", [False, True])
def test_a_download_gives_up_instead_of_hanging(tmp_path, trickle, capsys):
    server = _Server(trickle)
    dest = tmp_path / "hub" / PYTORCH_FID_FILE
    start = time.monotonic()
    try:
        ok = inception._download(dest, server.url, timeout=0.5, deadline=1.0)
    finally:
        server.close()
    assert not ok and not dest.exists() and not list(dest.parent.iterdir())  # no partial file either
    assert time.monotonic() - start < 10  # bounded by timeout/deadline, not by the server
    if trickle:
        assert "download failed (TimeoutError" in capsys.readouterr().err


def test_a_download_that_works_writes_the_whole_file(tmp_path):
    import functools
    import http.server

    served = tmp_path / "served"
    served.mkdir()
    payload = bytes(range(256)) * 20000  # 5 MB, several reads
    (served / PYTORCH_FID_FILE).write_bytes(payload)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{PYTORCH_FID_FILE}"
        dest = tmp_path / "hub" / PYTORCH_FID_FILE
        assert inception._download(dest, url, timeout=5, deadline=60)
        httpd.shutdown()
    assert dest.read_bytes() == payload
