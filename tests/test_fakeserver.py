"""The fake server itself, spoken to with plain urllib (no SDK)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from fakeserver import Delay, FakeServer, Reply, Status

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(server: FakeServer, body: dict[str, Any], path: str = "/chat/completions") -> tuple[int, Any]:
    req = urllib.request.Request(server.base_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_models_endpoint(fake_server: FakeServer) -> None:
    with _OPENER.open(fake_server.base_url + "/models", timeout=10) as resp:
        data = json.loads(resp.read())
    assert data["data"][0]["id"] == "fake-model"


def test_script_then_default_responder_and_recording(fake_server: FakeServer) -> None:
    fake_server.push(Reply("scripted", completion_tokens=5), Status(429, "slow", retry_after=1))
    body = {"model": "m", "messages": [{"role": "user", "content": "two words"}], "max_tokens": 7}
    code, data = post(fake_server, body)
    assert code == 200
    assert data["choices"][0]["message"]["content"] == "scripted"
    assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    code, data = post(fake_server, body)
    assert (code, data["error"]["message"]) == (429, "slow")
    code, data = post(fake_server, body)
    assert data["choices"][0]["message"]["content"] == "ok"  # the default responder
    assert fake_server.pending == 0
    assert fake_server.bodies == [body, body, body]


def test_unknown_route_is_404(fake_server: FakeServer) -> None:
    code, data = post(fake_server, {}, path="/embeddings")
    assert code == 404
    assert "no route" in data["error"]["message"]


def test_stop_wakes_a_delayed_handler() -> None:
    server = FakeServer().start()
    server.push(Delay(600))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            post(server, {"messages": []})
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    while not server.requests:
        threading.Event().wait(0.01)
    server.stop()  # returns once the handler thread has finished; it does not sit out the 600 s delay
    caller.join()
    assert len(errors) == 1  # the client saw the connection close without an answer
    with pytest.raises(RuntimeError):
        _ = server.base_url
