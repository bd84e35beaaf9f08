"""The model server's Unix socket (serving/local_socket.py): who may open it, and its file's life."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_llm.config import BackendConfig
from mesh_llm.errors import ConfigError
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.serving.local_socket import SUN_PATH_MAX, PrivateSocket, socket_stem
from mesh_llm.serving.model_server import ModelServer

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _connect(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))


def _connect_as(uid: int, path: Path) -> str:
    """Connect to `path` as user `uid` (a forked child that drops root): "connected", or the
    error's name (EACCES: the kernel refused that user)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then out
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                _connect(path)
                out = "connected"
            except OSError as exc:
                out = errno.errorcode.get(exc.errno or 0, str(exc))
            os.write(w, out.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as reader:
        out = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (as a home or /var directory can be), unlike pytest's."""
    base = Path(tempfile.mkdtemp(prefix="mesh-llm-test-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_socket_names_are_short_stable_per_model_and_never_shared(tmp_path: Path) -> None:
    long = "x" * 500
    assert socket_stem(long) == socket_stem(long) != socket_stem("y") and len(socket_stem(long)) == 16
    a, b = PrivateSocket(tmp_path, socket_stem(long)), PrivateSocket(tmp_path, socket_stem(long))
    try:
        assert a.path != b.path and a.path.name.startswith(socket_stem(long) + "-")
        assert len(a.path.name) == len("0123456789abcdef-01234567.sock")
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_another_local_user_cannot_open_the_socket(open_dir: Path) -> None:
    listener = PrivateSocket(open_dir / "run", "m")
    try:
        assert _mode(open_dir / "run") == 0o700 and _mode(listener.path) == 0o600
        _connect(listener.path)  # the node's own user gets in
        assert _connect_as(NOBODY, listener.path) == "EACCES"  # the directory keeps others out
        os.chmod(open_dir / "run", 0o755)
        assert _connect_as(NOBODY, listener.path) == "EACCES"  # and so does the socket's own mode
        os.chmod(listener.path, 0o666)
        assert _connect_as(NOBODY, listener.path) == "connected"  # the check above can see a way in
    finally:
        listener.close()


def test_the_directory_is_made_private_and_a_link_in_its_place_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, 0o755)
    listener = PrivateSocket(run, "m")
    assert (
        _mode(run) == 0o700
        and _mode(listener.path) == 0o600
        and stat.S_ISSOCK(os.lstat(listener.path).st_mode)
    )
    listener.close()
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(ConfigError, match="not a link"):
        PrivateSocket(tmp_path / "link", "m")


def test_a_stale_socket_is_replaced_and_a_stopped_one_removed(tmp_path: Path) -> None:
    first = PrivateSocket(tmp_path / "run", "m")
    first.sock.close()  # as if its node were killed: the file stays, nobody listens
    with pytest.raises(ConnectionRefusedError):
        _connect(first.path)
    second = PrivateSocket(tmp_path / "run", "m")
    assert not first.path.exists()  # the stale one is gone
    third = PrivateSocket(tmp_path / "run", "m")  # a live socket of the same model is not stale
    _connect(second.path)
    _connect(third.path)
    second.close()
    third.close()
    assert list((tmp_path / "run").iterdir()) == []


def test_a_path_too_long_for_a_socket_address_falls_back_to_a_private_temporary_directory(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * SUN_PATH_MAX) / "run"
    listener = PrivateSocket(deep, "m")
    try:
        assert len(os.fsencode(listener.path)) <= SUN_PATH_MAX and not deep.exists()
        assert _mode(listener.path.parent) == 0o700 and _mode(listener.path) == 0o600
        _connect(listener.path)
    finally:
        listener.close()
    assert not listener.path.parent.exists()


async def test_a_model_server_listens_in_its_socket_dir_and_removes_its_socket_on_stop(
    tmp_path: Path,
) -> None:
    config = BackendConfig(socket_dir=tmp_path / "run")
    server = ModelServer(ResolvedModel("m", tmp_path / "m.gguf", 1), config, tmp_path)
    assert server.socket_path.parent == tmp_path / "run"
    assert server.socket_path.name.startswith(socket_stem("m"))
    assert server.status().socket == str(server.socket_path) and server.base_url == "http://localhost"
    _connect(server.socket_path)  # listening (the node's backlog) before any child runs
    await server.stop()
    assert not server.socket_path.exists()
