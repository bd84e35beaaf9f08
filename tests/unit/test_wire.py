"""Control-stream framing: any split decodes the same; bad input gives typed errors only."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.errors import FrameTooLarge, MalformedFrame, WireError
from mesh_llm.peer.wire import FrameDecoder, encode_frame, try_decode_frame

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=6,
)
messages = st.builds(
    lambda kind, body: {**body, "t": kind},
    st.text(min_size=1, max_size=12),
    st.dictionaries(st.text(max_size=8), json_values, max_size=5),
)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_round_trip() -> None:
    msg = {"t": "gossip", "peers": [{"id": "ab", "vram": 24.5}], "ok": True}
    assert FrameDecoder().feed(encode_frame(msg)) == [msg]


def test_frames_are_length_prefixed_json() -> None:
    frame = encode_frame({"t": "x"})
    assert frame[:4] == struct.pack(">I", len(frame) - 4)
    assert json.loads(frame[4:]) == {"t": "x"}


def test_byte_by_byte_feeding_decodes_every_message() -> None:
    sent = [{"t": "a", "n": i, "s": "ü" * i} for i in range(5)]
    stream = b"".join(encode_frame(m) for m in sent)
    decoder = FrameDecoder()
    received = []
    for i in range(len(stream)):
        received += decoder.feed(stream[i : i + 1])
    assert received == sent
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(messages, max_size=6), st.data())
def test_any_split_decodes_the_same_messages(sent: list[dict[str, object]], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder()
    received = []
    start = 0
    for cut in [*cuts, len(stream)]:
        received += decoder.feed(stream[start:cut])
        start = cut
    assert received == sent


def test_oversized_header_fails_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">I", 101)[2:])


def test_frame_at_the_limit_is_accepted() -> None:
    payload = json.dumps({"t": "x", "pad": "a" * 80}).encode()
    decoder = FrameDecoder(max_frame=len(payload))
    assert decoder.feed(_frame(payload)) == [{"t": "x", "pad": "a" * 80}]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b"42",
        b'"t"',
        b"{}",
        b'{"t": 5}',
        b'{"t": null}',
        b"\xff\xfe{}",
        b"",
        '{"t": "x"}'.encode("utf-16"),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"t": "x", "n": ' + b"9" * 5000 + b"}",
    ],
)
def test_malformed_payloads_are_typed_errors(payload: bytes) -> None:
    with pytest.raises(MalformedFrame):
        FrameDecoder(max_frame=1 << 20).feed(_frame(payload))


def test_decoder_is_poisoned_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(MalformedFrame):
        decoder.feed(_frame(b"nope"))
    assert decoder.failed
    with pytest.raises(MalformedFrame):
        decoder.feed(encode_frame({"t": "fine"}))


def test_messages_before_a_bad_frame_are_lost_with_it() -> None:
    # The whole feed fails: the stream is broken and the connection will be closed anyway.
    decoder = FrameDecoder()
    with pytest.raises(WireError):
        decoder.feed(encode_frame({"t": "ok"}) + _frame(b"bad"))


@settings(max_examples=300)
@given(st.binary(max_size=300), st.data())
def test_garbage_raises_only_wire_errors(garbage: bytes, data: st.DataObject) -> None:
    decoder = FrameDecoder(max_frame=1000)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(garbage)), max_size=6)))
    start = 0
    try:
        for cut in [*cuts, len(garbage)]:
            for msg in decoder.feed(garbage[start:cut]):
                assert isinstance(msg, dict) and isinstance(msg["t"], str)
            start = cut
    except WireError:
        pass


def test_try_decode_frame_reports_bytes_used() -> None:
    frame = encode_frame({"t": "open", "kind": "http"})
    assert try_decode_frame(frame + b"raw bytes", 1 << 20) == ({"t": "open", "kind": "http"}, len(frame))
    assert try_decode_frame(frame[:-1], 1 << 20) is None
    assert try_decode_frame(b"", 1 << 20) is None


@pytest.mark.parametrize(
    "msg, error",
    [
        ({"no_type": 1}, MalformedFrame),
        ({"t": 3}, MalformedFrame),
        ({"t": "x", "v": float("nan")}, MalformedFrame),
        ({"t": "x", "v": object()}, MalformedFrame),
        ({"t": "x", "v": "\ud800"}, MalformedFrame),
        (["t", "x"], MalformedFrame),
        ({"t": "x", "pad": "a" * 2000}, FrameTooLarge),
    ],
)
def test_encode_rejects_unsendable_messages(msg: object, error: type[WireError]) -> None:
    with pytest.raises(error):
        encode_frame(msg, max_frame=1000)  # type: ignore[arg-type]


def test_pure_modules_import_no_io_libraries() -> None:
    code = (
        "import sys, mesh_llm.peer.wire, mesh_llm.peer.token, mesh_llm.peer.identity, "
        "mesh_llm.transport._handshake, mesh_llm.transport._credit; "
        "bad = [m for m in ('aioquic', 'qh3', 'fastapi', 'llama_cpp') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nan_and_infinity_are_not_json() -> None:
    from mesh_llm.errors import MalformedFrame
    from mesh_llm.peer.wire import _decode_payload

    for text in (b'{"t": "x", "epoch": Infinity}', b'{"t": "x", "v": NaN}', b'{"t": "x", "v": -Infinity}'):
        with pytest.raises(MalformedFrame):
            _decode_payload(text)
