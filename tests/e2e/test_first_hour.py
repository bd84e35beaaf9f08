"""What a newcomer meets in the first hour: no 404 at startup, whole log lines, no false alarms."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.harness import NodeProcess, stop_all

MODEL = "SmolLM2-135M"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_model_asked_for_answers_503_until_ready_and_every_request_is_one_log_line(
    tmp_path: Path,
) -> None:
    # COLUMNS unset: rich would assume 80 columns for a log that is not a terminal.
    node = NodeProcess(["--model", MODEL], tmp_path / "n", env={"COLUMNS": ""}).start()
    try:
        codes: list[int] = []
        with httpx.Client(timeout=60) as http:
            deadline = time.monotonic() + 120
            while (not codes or codes[-1] != 200) and time.monotonic() < deadline:
                assert node.proc is not None and node.proc.poll() is None, node.log()
                try:
                    r = http.post(f"{node.api}/v1/chat/completions", json=CHAT)
                except httpx.ConnectError:  # the API port is not open yet
                    time.sleep(0.01)
                    continue
                codes.append(r.status_code)
                if r.status_code == 503:
                    assert r.json()["error"]["code"] == "model_not_ready", r.text
                    assert int(r.headers["retry-after"]) > 0
            # From the first answer on: 503s, then 200s; never a 404 for the model it was told to serve.
            assert codes and codes[-1] == 200 and set(codes[:-1]) <= {503}, codes
            assert [
                http.post(f"{node.api}/v1/chat/completions", json=CHAT).status_code for _ in range(2)
            ] == [200] * 2
            assert http.get(f"{node.api}/v1/responses-of-the-future").status_code == 404
            assert http.get(f"{node.api}/v1/chat/completions").status_code == 405
        wanted = (
            ("GET /v1/responses-of-the-future ", "error=unknown_url"),
            ("GET /v1/chat/completions ", "status=405"),
        )

        def logged() -> bool:
            log = node.log()
            return all(any(a in line and b in line for line in log.splitlines()) for a, b in wanted)

        wait_until(logged, 10, "access lines for the 404 and the 405")
        access = [line for line in node.log().splitlines() if " model=" in line and " status=" in line]
        assert len(access) >= len(codes) + 4
        # Each access line whole on one line, from the method to the duration.
        assert all(" duration=" in line and line.split(" INFO ")[-1].lstrip().split()[0] in ("GET", "POST")
                   for line in access), "\n".join(access)  # fmt: skip
    finally:
        stop_all([node])


def test_a_join_and_a_leave_raise_no_warning(tmp_path: Path) -> None:
    a = NodeProcess(["--model", MODEL], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        b = NodeProcess(["--join", token, "--max-vram", "0.05"], tmp_path / "b").start()
        nodes.append(b)
        a.wait_for(lambda s: len(s["peers"]) == 1, 60, "B to join")
        b_short = b.status()["short_id"]
        b.stop()
        a.wait_for(lambda s: not s["peers"], 60, "B to leave")
        a.stop()
        assert f"peer {b_short} left the mesh" in a.log()  # said once, at INFO, in our words
        for node in nodes:
            assert "Native peer close" not in node.log(), node.log()
    finally:
        stop_all(nodes)
