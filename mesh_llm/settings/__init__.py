"""Every option of the node and of its model-server child, declared once (pure).

Each option is one `Setting` record: its name and flag, the type, default and bounds of its value,
its help, the part of the configuration it feeds and whether the child gets it. Two tables hold
them: `NODE` (`mesh-llm [options]`) and `MODEL_SERVER` (the child's command line). Made from
them, never written again elsewhere:

  cli._parser.node_parser       the node's argparse flags (`add_flags`)
  config.build_config           the values it turns into frozen records (`resolve`: given, else
                                the environment variable, else the default; bounds checked)
  serving.model_server          the child's command line (`model_server_args`) ...
  serving.model_server_main     ... and the parser that reads it (`model_server_parser`)
  docs/cli.md, "## Flags"       the flag table (`flags_markdown`; regenerate with
                                `python -m mesh_llm.settings --write docs/cli.md`)

Config records and the engine take their defaults from here (`node_default`). Tests check that
each of these agrees with the tables.
"""

from mesh_llm.settings._docs import flags_markdown, with_flag_table
from mesh_llm.settings._model_server import MODEL_SERVER, model_server_args, model_server_parser
from mesh_llm.settings._node import GROUPS, NODE, node_default
from mesh_llm.settings._setting import Setting, add_flags, find, resolve, write_flags

__all__ = [
    "GROUPS",
    "MODEL_SERVER",
    "NODE",
    "Setting",
    "add_flags",
    "find",
    "flags_markdown",
    "model_server_args",
    "model_server_parser",
    "node_default",
    "resolve",
    "with_flag_table",
    "write_flags",
]
