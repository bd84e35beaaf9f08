"""What the mesh layer keeps in the node's state directory: its key, its mesh, its last port."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from mesh_llm.errors import ConfigError, TokenError
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import InviteToken, MeshCredentials, new_mesh


def load_identity(state_dir: Path) -> NodeIdentity:
    """This node's persistent ed25519 identity (created on first start)."""
    return NodeIdentity.load_or_create(state_dir / "node.key")


def _credentials_path(state_dir: Path) -> Path:
    return state_dir / "mesh.json"


def load_or_create_credentials(state_dir: Path, tokens: list[InviteToken]) -> MeshCredentials:
    """The mesh this node belongs to: the first token's, else the one it made before, else a new one.

    Kept in the state directory (mode 0600) so a restarted node comes back to the same mesh and
    the invite tokens it handed out stay valid.
    """
    path = _credentials_path(state_dir)
    if tokens:
        creds = tokens[0].credentials
        for other in tokens[1:]:
            if other.credentials.mesh_id != creds.mesh_id:
                raise TokenError("the --join tokens belong to different meshes; give tokens of one mesh")
    elif path.is_file():
        try:
            data = json.loads(path.read_text())
            creds = MeshCredentials(bytes.fromhex(data["mesh_id"]), bytes.fromhex(data["secret"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is corrupt ({exc}); remove it to start a new mesh") from exc
        return creds
    else:
        creds = new_mesh()
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"mesh_id": creds.mesh_id.hex(), "secret": creds.secret.hex()}, f)
    os.replace(tmp, path)
    return creds


def _port_path(state_dir: Path) -> Path:
    return state_dir / "mesh-port"


def save_port(state_dir: Path, port: int) -> None:
    """Remember the UDP port this run listens on (best effort)."""
    with contextlib.suppress(OSError):
        _port_path(state_dir).write_text(f"{port}\n")


def last_port(state_dir: Path) -> int:
    """The UDP port this node used last time (0 if unknown), so its invite tokens stay valid."""
    try:
        port = int(_port_path(state_dir).read_text().strip())
    except (OSError, ValueError):
        return 0
    return port if 0 < port < 65536 else 0
