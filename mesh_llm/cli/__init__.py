"""The `mesh-llm` command: flags -> NodeConfig -> Node, plus small subcommands.

_main           main(): dispatch to a subcommand, help, or the node
_parser         the node's flags
_run            the node: flags -> config -> Node, and what it prints when up
_commands       the subcommand table
_control        finding and asking the running node; drop, plan
_status         status, token
_client_setup   opencode, goose, claude, codex (_toml: writing and merging their TOML)
_local          download, rotate-key (no node needed)
_output         the stderr console, error lines, tokens printed whole
discover, gpus  their subcommands; render, clients, agents: pure tables and configurations
logs            logging setup (text or JSON lines)
"""

from mesh_llm.cli._commands import SUBCOMMANDS
from mesh_llm.cli._main import main
from mesh_llm.cli._parser import node_parser

__all__ = ["SUBCOMMANDS", "main", "node_parser"]
