"""The device health check: ready only when /metrics answers and the agent has a model."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from iotad.edge import health


@pytest.fixture()
def metrics_server() -> Iterator[tuple[int, dict[str, str]]]:
    page = {"text": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page["text"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], page
    finally:
        server.shutdown()
        server.server_close()


def test_ready_only_with_a_model(metrics_server: tuple[int, dict[str, str]],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    port, page = metrics_server
    page["text"] = "# HELP x\niotad_edge_scored_flows_total{device=\"d\"} 5.0\n"
    assert health.main([str(port)]) == 1 and "starting" in capsys.readouterr().out
    page["text"] = "# TYPE iotad_edge_model_round gauge\niotad_edge_model_round{device=\"d\"} 0.0\n"
    assert health.main([str(port)]) == 1 and "no model yet" in capsys.readouterr().out
    page["text"] = "iotad_edge_model_round{device=\"d\"} 3.0\n"
    assert health.main([str(port)]) == 0 and capsys.readouterr().out.strip() == "ready"


def test_not_ready_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        assert health.main([str(port)]) == 1
    assert "does not answer" in capsys.readouterr().out
