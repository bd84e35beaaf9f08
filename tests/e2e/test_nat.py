"""NAT traversal end to end: real nodes in the NAT lab (tests/natlab.py), as issue 26 asks.

A is a public member at 203.0.113.10, B and C sit behind NAT routers and join with A's token.
A serves only a tiny model of its own and offers 1 MB: it coordinates punches and relays, but
can neither hold a layer of SmolLM2 nor be elected to host it. B offers less memory than C, so
the mesh elects C to host SmolLM2 (the most capacity wins) and B is at most C's worker.

* Endpoint-independent NATs on both sides: B and C punch a direct link through them (no relay),
  B's API answers for the model only C serves, a split between them forms, and their link
  outlives A dropping off the network.
* C behind a symmetric NAT: B and C link through A, B's API still answers, a capture on the hub
  sees the relayed packets but none of the request's plaintext, and when A leaves the relayed
  link is reported lost.
* B and C whose first attempts to link all fail (the path between them down, A not relaying)
  keep trying, and link once the path is back.

Each scenario builds one lab and three nodes for its tests (class fixtures). Every wait is for
an event (a status showing a state, a log line) within a deadline; no assertion times anything.
HTTP to a node goes from a thread inside its namespace (natlab.NamespaceThread).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gguf_fixtures import write_dialect_gguf
from tests.harness import NodeProcess, stop_all
from tests.natlab import Lab, NamespaceThread, NatKind, nat_lab, udp_frames

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None,
    reason="needs root, iproute2 and nftables (bundle/install-nat.sh) for the NAT lab",
)

MODEL = "SmolLM2-135M"
B_VRAM, C_VRAM = "0.5", "0.6"  # GB: C has the most capacity of the mesh; both hold SmolLM2 layers
WAIT = 90.0  # the deadline for one expected state (model loads and reloads are in it)
Status = dict[str, Any]


@dataclass
class NatMesh:
    """A lab with a node in A, B and C, and a thread inside each of their namespaces."""

    lab: Lab
    nodes: dict[str, NodeProcess]  # "a", "b", "c"
    threads: dict[str, NamespaceThread]
    ids: dict[str, str]

    def status(self, name: str) -> Status:
        return self.threads[name].call(self.nodes[name].status)

    def wait_for(
        self, name: str, check: Callable[[Status], bool], what: str, timeout: float = WAIT
    ) -> Status:
        """Wait until `check` holds for node `name`'s status; fail with its log otherwise."""
        return self.threads[name].call(self.nodes[name].wait_for, check, timeout, f"{name.upper()}: {what}")

    def chat(self, name: str, prompt: str, max_tokens: int = 12) -> str:
        """A chat answer from node `name`'s API; a 503 (a model loading or reloading) is asked again."""
        api = self.nodes[name].api
        body = {
            "model": MODEL, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
        }  # fmt: skip

        def ask() -> str:
            deadline = time.monotonic() + WAIT
            while True:
                r = httpx.post(f"{api}/v1/chat/completions", json=body, timeout=60)
                if r.status_code == 200:
                    return str(r.json()["choices"][0]["message"]["content"])
                if r.status_code != 503 or time.monotonic() > deadline:
                    raise AssertionError(f"{name.upper()} answered {r.status_code}: {r.text}")
                time.sleep(0.5)

        return self.threads[name].call(ask)

    def log(self, name: str) -> str:
        return self.nodes[name].log()


def peer(status: Status, node_id: str) -> Status | None:
    """The status's row for peer `node_id`, if it lists it."""
    return next((p for p in status["peers"] if p["node_id"] == node_id), None)


def linked(node_id: str, path: str) -> Callable[[Status], bool]:
    """A check: the status shows an open link to `node_id` on `path`."""

    def check(s: Status) -> bool:
        row = peer(s, node_id)
        return row is not None and row["connected"] and row.get("path") == path

    return check


def model_rows(status: Status) -> list[Status]:
    return [m for m in status["models"] if m["name"] == MODEL]


def served_only_by(host: str) -> Callable[[Status], bool]:
    """A check: the status shows MODEL ready, and hosted by `host` alone."""

    def check(s: Status) -> bool:
        rows = model_rows(s)
        hosts = {m["host"] for m in rows if m.get("role", "host") == "host"}
        return hosts == {host} and any(m["ready"] and m["host"] == host for m in rows)

    return check


# On R1: B and C's router cannot exchange a packet (a path down between them), A still reaches both.
_APART = """
table ip apart {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        ip daddr {r2} drop
        ip saddr {r2} drop
    }}
}}
"""


def rejoin(lab: Lab) -> None:
    done = lab.run(lab.r1, ["nft", "delete", "table", "ip", "apart"])
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def nat_mesh(
    tmp: Path, c_nat: NatKind, c_args: list[str], a_args: tuple[str, ...] = (), apart: bool = False
) -> Iterator[NatMesh]:
    """A lab with C behind `c_nat` (B behind an EIM NAT), A started, then C and B joining it.

    `apart`: R1 drops everything between B and C's router until the test calls `rejoin(lab)`.
    """
    tiny = write_dialect_gguf(tmp / "tiny.gguf", "", ["</s>"], "</s>")
    with nat_lab(c_nat=c_nat) as lab:
        if apart:
            apply = [*lab.prefix(lab.r1), "nft", "-f", "-"]
            subprocess.run(apply, input=_APART.format(r2=lab.public_c), check=True, text=True, timeout=10)
        threads = {name: NamespaceThread(ns) for name, ns in (("a", lab.a), ("b", lab.b), ("c", lab.c))}
        nodes: dict[str, NodeProcess] = {}
        try:
            nodes["a"] = NodeProcess(
                ["--model", str(tiny), "--max-vram", "0.001", "--ctx-size", "256", "--parallel", "1", *a_args],
                tmp / "a", prefix=lab.prefix(lab.a),
            ).start()  # fmt: skip
            token = threads["a"].call(nodes["a"].wait_serving)["invite_token"]
            nodes["c"] = NodeProcess(["--join", token, *c_args], tmp / "c", prefix=lab.prefix(lab.c)).start()
            nodes["b"] = NodeProcess(
                ["--join", token, "--max-vram", B_VRAM], tmp / "b", prefix=lab.prefix(lab.b)
            ).start()
            mesh = NatMesh(lab, nodes, threads, {})
            for name in ("a", "b", "c"):
                mesh.ids[name] = mesh.wait_for(name, lambda s: True, "its status", 60)["node_id"]
            yield mesh
        finally:
            try:
                stop_all(nodes.values())
            finally:
                for thread in threads.values():
                    thread.close()


class TestEndpointIndependentNats:
    @pytest.fixture(scope="class")
    def mesh(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatMesh]:
        with nat_mesh(
            tmp_path_factory.mktemp("nat-eim"), "eim", ["--split", "--model", MODEL, "--max-vram", C_VRAM]
        ) as m:
            yield m

    def test_b_and_c_punch_a_direct_link_and_b_answers_for_the_model_only_c_serves(
        self, mesh: NatMesh
    ) -> None:
        a_id, c_id = mesh.ids["a"], mesh.ids["c"]
        s = mesh.wait_for("b", linked(c_id, "punched"), "a punched link to C")
        assert peer(s, c_id)["relay"] is None  # type: ignore[index]
        assert linked(a_id, "direct")(s)
        # Both ends see it punched: B dialed through the holes, or C did.
        mesh.wait_for("c", linked(mesh.ids["b"], "punched"), "a punched link to B")

        s = mesh.wait_for("b", served_only_by(c_id), f"{MODEL} ready on C")
        assert not [m for m in model_rows(s) if m["local"]]  # B serves nothing of it itself
        answer = mesh.chat("b", "Name a colour.")
        assert answer.strip()
        # The answer came over the link: B's proxy counts the request as routed to C.
        routed = model_rows(mesh.status("b"))
        assert sum(m["requests"] for m in routed if m["host"] == c_id) >= 1, routed

    def test_a_split_between_b_and_c_forms_over_the_punched_link_and_answers(self, mesh: NatMesh) -> None:
        b_id, c_id = mesh.ids["b"], mesh.ids["c"]

        def split_over_b_and_c(s: Status) -> bool:
            rows = [m for m in model_rows(s) if m["local"]]
            return (
                bool(rows)
                and rows[0].get("mode") == "split"
                and rows[0]["ready"]
                and [sh["node_id"] for sh in rows[0]["shards"]] == [c_id, b_id]
            )

        s = mesh.wait_for("c", split_over_b_and_c, "a split of C and B")
        (row,) = [m for m in model_rows(s) if m["local"]]
        assert mesh.ids["a"] not in [sh["node_id"] for sh in row["shards"]]
        assert linked(b_id, "punched")(s)
        assert mesh.status("b")["role"] == "worker"
        sent = row["shards"][1]["bytes_sent"]
        assert mesh.chat("b", "Count to three.").strip()
        (row,) = [m for m in model_rows(mesh.status("c")) if m["local"]]
        assert row["shards"][1]["bytes_sent"] > sent  # the worker's layers ran, across the link

    def test_the_punched_link_outlives_a_dropping_off_the_network(self, mesh: NatMesh) -> None:
        a_id, c_id = mesh.ids["a"], mesh.ids["c"]
        mesh.wait_for("b", linked(c_id, "punched"), "a punched link to C")
        links_to_c = mesh.log("b").count(f"linked with {c_id[:8]}")
        mesh.lab.cut(mesh.lab.a)  # no goodbye: B and C find out when A's links go silent
        try:
            s = mesh.wait_for("b", lambda s: not (peer(s, a_id) or {}).get("connected"), "A gone")
            assert linked(c_id, "punched")(s), peer(s, c_id)
            mesh.wait_for("c", lambda s: not (peer(s, a_id) or {}).get("connected"), "A gone")
            assert mesh.chat("b", "Say yes.").strip()
            s = mesh.status("b")
            assert linked(c_id, "punched")(s), peer(s, c_id)
            assert mesh.log("b").count(f"linked with {c_id[:8]}") == links_to_c  # the same link throughout
        finally:
            mesh.lab.heal(mesh.lab.a)


class TestSymmetricNat:
    @pytest.fixture(scope="class")
    def mesh(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatMesh]:
        with nat_mesh(
            tmp_path_factory.mktemp("nat-symmetric"), "symmetric", ["--model", MODEL, "--max-vram", C_VRAM]
        ) as m:
            yield m

    def test_b_and_c_link_through_a_and_the_relay_sees_no_plaintext(
        self, mesh: NatMesh, tmp_path: Path
    ) -> None:
        lab, a_id, c_id = mesh.lab, mesh.ids["a"], mesh.ids["c"]
        s = mesh.wait_for("b", linked(c_id, "relayed"), "a link to C relayed")
        assert peer(s, c_id)["relay"] == a_id  # type: ignore[index]
        mesh.wait_for("c", linked(mesh.ids["b"], "relayed"), "a link to B relayed")
        mesh.wait_for("b", served_only_by(c_id), f"{MODEL} ready on C")
        relayed_before = mesh.status("a")["relay"]["bytes"]

        marker = f"Zebra{secrets.token_hex(5)}"
        with (
            lab.capture(lab.hub, tmp_path / "hub.pcap") as pcap,
            lab.capture(lab.b, tmp_path / "b.pcap") as pcap_b,
        ):
            answer = mesh.chat("b", f"Repeat this word exactly once: {marker}", max_tokens=24)
        # The search can find the marker: B's loopback carries the request as plain HTTP.
        assert marker.encode() in pcap_b.read_bytes()
        assert answer.strip()
        routed = model_rows(mesh.status("b"))
        assert sum(m["requests"] for m in routed if m["host"] == c_id) >= 1, routed

        frames = udp_frames(pcap.read_bytes())
        public = {lab.ip_a, lab.public_b, lab.public_c}
        to_and_from_a = {(f.src, f.dst) for f in frames if lab.ip_a in (f.src, f.dst)}
        # The request crossed the hub as B's packets to A and A's packets to C, and back.
        assert {(lab.public_b, lab.ip_a), (lab.ip_a, lab.public_c)} <= to_and_from_a, to_and_from_a
        assert {(lab.ip_a, lab.public_b), (lab.public_c, lab.ip_a)} <= to_and_from_a, to_and_from_a
        assert {f.src for f in frames} | {f.dst for f in frames} <= public
        relayed = sum(len(f.payload) for f in frames if lab.ip_a in (f.src, f.dst))
        assert relayed > 2 * len(marker)
        wire = b"\n".join(f.payload for f in frames)
        secrets_seen = [marker.encode(), marker.lower().encode(), *_words(answer)]
        assert not [w for w in secrets_seen if w in wire], "plaintext of the request on the wire"
        assert mesh.status("a")["relay"]["bytes"] > relayed_before  # A counted what it carried

    def test_when_the_relay_leaves_the_relayed_link_is_reported_lost(self, mesh: NatMesh) -> None:
        a_id, b_id, c_id = mesh.ids["a"], mesh.ids["b"], mesh.ids["c"]
        mesh.wait_for("b", linked(c_id, "relayed"), "a link to C relayed")
        mesh.nodes["a"].stop()
        s = mesh.wait_for(
            "b", lambda s: not (peer(s, c_id) or {}).get("connected"), "C no longer linked once A left"
        )
        assert not (peer(s, a_id) or {}).get("connected")
        assert f"link to peer {c_id[:8]} lost" in mesh.log("b")
        mesh.wait_for("c", lambda s: not (peer(s, b_id) or {}).get("connected"), "B no longer linked")


def test_members_that_failed_to_reach_each_other_keep_trying_and_link_once_they_can(
    tmp_path: Path,
) -> None:
    # A refuses to relay, and the path between B and C is down when they join: their first
    # attempts (direct, punched, relayed) all fail. Once the path is back they must still link.
    with nat_mesh(tmp_path, "eim", [], a_args=("--no-relay",), apart=True) as mesh:
        b_id, c_id = mesh.ids["b"], mesh.ids["c"]
        refused = [f"refused to relay for {b_id[:8]}", f"refused to relay for {c_id[:8]}"]
        mesh.threads["a"].call(
            mesh.nodes["a"].wait_for, lambda s: all(r in mesh.log("a") for r in refused), WAIT, "both refused"
        )
        assert not (peer(mesh.status("b"), c_id) or {}).get("connected")
        rejoin(mesh.lab)
        mesh.wait_for("b", linked(c_id, "punched"), "a punched link to C once the path is back")
        mesh.wait_for("c", linked(b_id, "punched"), "a punched link to B")


def _words(text: str) -> list[bytes]:
    """The answer's longer words: plaintext the capture must not hold either."""
    return [w.encode() for w in text.split() if len(w) >= 8]
