"""The model server's address: a Unix socket that only the node's user can open.

A loopback TCP port is open to every process on the machine, whoever runs it; a Unix socket is a
file, and the kernel checks its path's permissions before a connection reaches the server. The
socket lives in a directory of mode 0700 (`<state-dir>/run/` when its path fits a socket
address) and is itself 0600, so another local user cannot even find it, let alone connect.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
import stat
import tempfile
from pathlib import Path

from mesh_llm.errors import ConfigError

__all__ = ["SUN_PATH_MAX", "PrivateSocket", "private_dir", "socket_stem"]

log = logging.getLogger(__name__)

# sockaddr_un.sun_path holds 108 bytes on Linux and 104 on macOS, the final NUL included.
SUN_PATH_MAX = 100


def socket_stem(model: str) -> str:
    """Pure: how the socket files of `model` begin: short whatever the name, and the same on
    every run, so that stale sockets left by a killed node are found and removed."""
    return hashlib.sha256(model.encode()).hexdigest()[:16]


def private_dir(path: Path) -> Path:
    """Make `path` a directory only this user can enter (mode 0700), tightening one that exists.

    Refuses (ConfigError) a path that is a link, not a directory, or owned by another user.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(
            f"{path} must be a directory of this user, not a link, for the model servers' sockets"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= SUN_PATH_MAX


class PrivateSocket:
    """A listening Unix socket at `<directory>/<stem>-<random>.sock`, mode 0600 in a 0700 directory.

    When `directory` is None, or its path is too long for a socket address, the socket goes
    into a fresh private temporary directory instead (mkdtemp makes it 0700), removed again on
    `close`. Sockets of the same stem that nobody listens on any more (left by a run that was
    killed) are removed first. Each socket gets a name of its own, so that closing one can never
    remove another's file, even one that took over from it.
    """

    def __init__(self, directory: Path | None, stem: str) -> None:
        self._temp: Path | None = None
        name = f"{stem}-{secrets.token_hex(4)}.sock"
        if directory is None or not _fits(directory / name):
            if directory is not None:
                log.info(
                    "%s is too long for a socket address; using a private temporary directory", directory
                )
            self._temp = _temp_dir(name)
            directory = self._temp
        else:
            private_dir(directory)
            _remove_stale(directory, stem)
        self.path = directory / name
        try:
            self.sock = _bind(self.path)
        except BaseException:
            self._remove_temp()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket and remove its file; idempotent."""
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._remove_temp()

    def _remove_temp(self) -> None:
        if self._temp is not None:
            with contextlib.suppress(OSError):
                self._temp.rmdir()
            self._temp = None


def _temp_dir(name: str) -> Path:
    """A new private directory (0700) whose socket path fits; /tmp if $TMPDIR's does not.
    (A killed node leaves its socket here; the next run's is elsewhere, so it is not reused.)"""
    base = tempfile.gettempdir()
    if not _fits(Path(base) / "mesh-llm-xxxxxxxx" / name):
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="mesh-llm-", dir=base))


def _remove_stale(directory: Path, stem: str) -> None:
    """Remove the sockets of `stem` in `directory` that refuse connections: their node was killed
    before it could remove them. One that answers is alive (another node's), and stays."""
    for path in directory.glob(f"{stem}-*.sock"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    path.unlink()
                    log.info("removed the stale model-server socket %s", path)
            except OSError:
                pass  # busy or not a socket: leave it


def _bind(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # the directory already keeps others out; this says so on the file too
        sock.listen(128)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return sock
