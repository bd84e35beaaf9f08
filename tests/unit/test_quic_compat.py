"""The QUIC engines in memory: every pair completes a handshake, and every private part we lean
on is still where we read it. A test here fails when a library changes under the transport."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from mesh_llm.errors import ConfigError
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.transport._codes import CloseCode
from mesh_llm.transport._compat import ENGINES, NORMAL_CLOSES, QH3_LOGGER, QuicEngine, load_engine
from mesh_llm.transport._listener import destination_cid

A, B = ("10.0.0.1", 4433), ("10.0.0.2", 4433)


def _poll(engine: QuicEngine, quic: Any, now: float) -> list[tuple[bytes, Any]]:
    try:
        return list(quic.datagrams_to_send(now=now))
    except engine.stream_errors:  # as the adapter does: qh3's core may fail one poll (see _compat.py)
        return []


def _handshake(client_engine: QuicEngine, server_engine: QuicEngine) -> tuple[Any, Any, bytes, float]:
    """Move datagrams (and timers) between a client and a server until both have completed.

    Returns both connections, the server's certificate, and the simulated seconds it took.
    """
    identity = NodeIdentity.generate()
    credentials = server_engine.server_credentials(*identity.tls_certificate())
    client = client_engine.client_connection(datagram_size=1452, idle_timeout=5.0)
    start = now = 1.0
    client.connect(B, now=now)
    server: Any = None
    done = {"client": False, "server": False}
    for _ in range(200):
        for data, _ in _poll(client_engine, client, now):
            if server is None:
                parsed = destination_cid(data, 8)
                assert parsed is not None and parsed[1], "the client's first datagram is an Initial"
                server = server_engine.server_connection(
                    credentials, datagram_size=1452, idle_timeout=5.0, original_dcid=parsed[0]
                )
            server.receive_datagram(data, A, now=now)
        if server is not None:
            for data, _ in _poll(server_engine, server, now):
                client.receive_datagram(data, B, now=now)
        for side, quic in (("client", client), ("server", server)):
            while quic is not None and (event := quic.next_event()) is not None:
                assert type(event).__name__ != "ConnectionTerminated", event
                done[side] |= type(event).__name__ == "HandshakeCompleted"
        if all(done.values()):
            return client, server, credentials.certificate_der, now - start
        # Nothing in flight: jump to the earliest timer (a retransmission), as the adapter would.
        timers = [(t, q) for q in (client, server) if q is not None and (t := q.get_timer()) is not None]
        if timers:
            at, quic = min(timers, key=lambda pair: pair[0])
            now = max(now + 0.001, at)
            quic.handle_timer(now=now)
        else:
            now += 0.001
    raise AssertionError(f"no handshake: {done}")


@pytest.mark.parametrize("client_name", ENGINES)
@pytest.mark.parametrize("server_name", ENGINES)
def test_every_pair_of_engines_completes_a_handshake(client_name: str, server_name: str) -> None:
    client, _, certificate, _ = _handshake(load_engine(client_name), load_engine(server_name))
    # The dialer reads the listener's certificate to check it is the node it claims.
    assert load_engine(client_name).peer_certificate(client) == certificate


def test_aioquic_dialers_offer_one_key_share() -> None:
    engine = load_engine("aioquic")
    client = engine.client_connection(datagram_size=1452, idle_timeout=5.0)
    client.connect(B, now=1.0)
    # Private: aioquic's TLS context lists the groups it sends key shares for.
    assert [int(group) for group in client.tls._supported_groups] == [0x001D]  # X25519


def test_aioquic_keeps_its_delayed_ack_where_we_move_it() -> None:
    engine = load_engine("aioquic")
    client, _, _, _ = _handshake(engine, engine)
    from aioquic import tls

    space = client._spaces[tls.Epoch.ONE_RTT]
    assert isinstance(space.ack_at, float | None)
    space.ack_at = 5.0
    engine.acknowledge_now(client, 2.0)
    assert space.ack_at == 2.0


def test_aioquic_keeps_the_peer_certificate_in_its_tls_context() -> None:
    engine = load_engine("aioquic")
    client, _, certificate, _ = _handshake(engine, load_engine("qh3"))
    assert client.tls._peer_certificate is not None
    assert engine.peer_certificate(client) == certificate


def test_unknown_engines_are_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown QUIC engine"):
        load_engine("quiche")


def test_destination_ids_are_read_from_long_and_short_headers() -> None:
    initial = bytes([0xC0]) + (1).to_bytes(4, "big") + bytes([4]) + b"abcd" + bytes([0]) + b"x" * 1200
    assert destination_cid(initial, 8) == (b"abcd", True)
    handshake = bytes([0xE0]) + initial[1:]
    assert destination_cid(handshake, 8) == (b"abcd", False)
    other_version = bytes([0xC0]) + (2).to_bytes(4, "big") + initial[5:]
    assert destination_cid(other_version, 8) == (b"abcd", False)
    assert destination_cid(bytes([0x40]) + b"12345678" + b"payload", 8) == (b"12345678", False)
    assert destination_cid(b"", 8) is None
    assert destination_cid(bytes([0xC0, 0, 0, 0, 1, 30]) + b"z" * 40, 8) is None  # ids are at most 20 bytes


@pytest.mark.parametrize("code", list(CloseCode))
def test_qh3_warns_of_a_peer_close_only_when_it_is_not_a_normal_one(
    code: CloseCode, caplog: pytest.LogCaptureFixture
) -> None:
    engine = load_engine("qh3")
    client, server, _, now = _handshake(engine, engine)
    client.close(error_code=code, reason_phrase="goodbye")
    with caplog.at_level(logging.DEBUG, logger=QH3_LOGGER):
        for data, _ in _poll(engine, client, now):
            server.receive_datagram(data, A, now=now)
    assert server._close_event.error_code == code  # private: what the server took from the close
    warned = [r for r in caplog.records if r.name == QH3_LOGGER and "peer close" in r.getMessage()]
    assert len(warned) == (0 if code in NORMAL_CLOSES else 1)


@pytest.mark.parametrize("name", ENGINES)
def test_a_streams_untaken_bytes_are_counted_until_the_peer_has_them(name: str) -> None:
    # aioquic's count is private (its sender's buffer); qh3's is public.
    engine = load_engine(name)
    client, server, _, _ = _handshake(engine, engine)
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"x" * 1000)
    assert engine.send_backlog(client, stream_id) == 1000
    for data, _ in _poll(engine, client, 10.0):
        server.receive_datagram(data, A, now=10.0)
    for data, _ in _poll(engine, server, 10.1):
        client.receive_datagram(data, B, now=10.1)
    assert engine.send_backlog(client, stream_id) == 0
