"""Mesh authentication driven in memory: two state machines, messages moved by hand."""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import MeshCredentials, new_mesh
from mesh_llm.transport._codes import CloseCode
from mesh_llm.transport._handshake import (
    DialerHandshake,
    ListenerHandshake,
    Step,
    make_proof,
    proof_is_valid,
    transcript,
)

WINDOW = 1 << 20


def _der(identity: NodeIdentity) -> bytes:
    return identity.tls_certificate()[0].public_bytes(serialization.Encoding.DER)


def _pair(
    dialer_mesh: MeshCredentials,
    listener_mesh: MeshCredentials | None = None,
    *,
    certificate_of: NodeIdentity | None = None,
    expected: str | None = None,
) -> tuple[DialerHandshake, ListenerHandshake, NodeIdentity, NodeIdentity]:
    dialer_id, listener_id = NodeIdentity.generate(), NodeIdentity.generate()
    listener = ListenerHandshake(
        listener_mesh or dialer_mesh, listener_id, WINDOW, own_certificate=_der(listener_id)
    )
    dialer = DialerHandshake(
        dialer_mesh,
        dialer_id,
        WINDOW,
        listener_certificate=_der(certificate_of or listener_id),
        expected_node_id=expected,
    )
    return dialer, listener, dialer_id, listener_id


def _only(step: Step) -> dict[str, Any]:
    assert step.refusal is None and len(step.send) == 1
    return step.send[0]


def test_two_sides_with_one_secret_authenticate_each_other() -> None:
    mesh = new_mesh()
    dialer, listener, dialer_id, listener_id = _pair(mesh)
    hello_back = _only(listener.receive(_only(dialer.start())))
    assert dialer.receive(hello_back) == Step() and dialer.identified
    assert dialer.peer is not None and dialer.peer.node_id == listener_id.node_id
    assert listener.receive(_only(dialer.prove())) == Step() and listener.identified
    assert listener.peer is not None and listener.peer.node_id == dialer_id.node_id
    proof = _only(listener.accept())
    assert listener.done
    assert dialer.receive(proof) == Step() and dialer.done


def test_a_wrong_secret_is_refused_before_the_listener_proves_anything() -> None:
    mesh = new_mesh()
    forged = MeshCredentials(mesh.mesh_id, os.urandom(len(mesh.secret)))
    dialer, listener, _, _ = _pair(forged, mesh)
    dialer.receive(_only(listener.receive(_only(dialer.start()))))
    step = listener.receive(_only(dialer.prove()))
    assert step.refusal is not None and step.refusal.code == CloseCode.AUTH_FAILED and not step.send
    with pytest.raises(RuntimeError):
        listener.accept()


def test_a_listener_without_the_secret_fails_its_proof() -> None:
    mesh = new_mesh()
    dialer, listener, _, listener_id = _pair(mesh)
    dialer.receive(_only(listener.receive(_only(dialer.start()))))
    listener.receive(_only(dialer.prove()))
    # It knows the mesh id and holds its node key, but signs the MAC with a guessed secret.
    forged = make_proof(b"server", os.urandom(len(mesh.secret)), listener_id, listener._transcript)
    step = dialer.receive(forged)
    assert step.refusal is not None and step.refusal.code == CloseCode.AUTH_FAILED and not dialer.done


def test_another_mesh_is_told_apart_by_its_hello() -> None:
    dialer, listener, _, _ = _pair(new_mesh(), new_mesh())
    step = listener.receive(_only(dialer.start()))
    assert step.refusal is not None and step.refusal.code == CloseCode.WRONG_MESH and not step.send


def test_a_certificate_that_is_not_the_claimed_node_is_refused() -> None:
    dialer, listener, _, _ = _pair(new_mesh(), certificate_of=NodeIdentity.generate())
    step = dialer.receive(_only(listener.receive(_only(dialer.start()))))
    assert step.refusal is not None and "TLS key" in step.refusal.reason


def test_reaching_another_node_than_expected_is_refused() -> None:
    dialer, listener, _, _ = _pair(new_mesh(), expected=NodeIdentity.generate().node_id)
    step = dialer.receive(_only(listener.receive(_only(dialer.start()))))
    assert step.refusal is not None and "not the expected" in step.refusal.reason


def test_a_proof_is_not_accepted_for_the_other_role_or_a_new_session() -> None:
    mesh = new_mesh()
    dialer, listener, _, _ = _pair(mesh)
    dialer.receive(_only(listener.receive(_only(dialer.start()))))
    client_proof = _only(dialer.prove())
    # Reflected back as the listener's proof: the role prefix differs.
    assert dialer.receive(client_proof).refusal is not None
    # Replayed into a fresh session with the same nodes: new nonces, new transcript.
    dialer2, listener2, _, _ = _pair(mesh)
    listener2.receive(_only(dialer2.start()))
    assert listener2.receive(client_proof).refusal is not None


def test_proofs_are_bound_to_role_certificate_and_nonces() -> None:
    secret = os.urandom(32)
    identity = NodeIdentity.generate()
    dialer = DialerHandshake(new_mesh(), identity, WINDOW, listener_certificate=None)
    hello_a, hello_b = (
        dialer.ours,
        DialerHandshake(new_mesh(), NodeIdentity.generate(), WINDOW, listener_certificate=None).ours,
    )
    signed = transcript(b"m" * 16, b"c" * 32, hello_a, hello_b)
    proof = make_proof(b"client", secret, identity, signed)
    assert proof_is_valid(b"client", secret, identity.node_id, signed, proof)
    assert not proof_is_valid(
        b"client", secret, identity.node_id, transcript(b"m" * 16, b"d" * 32, hello_a, hello_b), proof
    )
    assert not proof_is_valid(b"server", secret, identity.node_id, signed, proof)
    assert not proof_is_valid(b"client", os.urandom(32), identity.node_id, signed, proof)
    assert not proof_is_valid(b"client", secret, hello_b.node_id, signed, proof)


def test_steps_out_of_order_are_a_programming_error() -> None:
    dialer, listener, _, _ = _pair(new_mesh())
    with pytest.raises(RuntimeError):
        dialer.prove()
    with pytest.raises(RuntimeError):
        listener.accept()
