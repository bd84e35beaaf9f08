"""`python -m mesh_llm.settings --markdown` prints the docs' flag table; `--write docs/cli.md`
puts it in place of that file's "## Flags" section."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mesh_llm.settings._docs import flags_markdown, with_flag_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mesh_llm.settings", description=__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--markdown", action="store_true", help="print the flag table")
    what.add_argument("--write", type=Path, metavar="FILE", help="replace FILE's '## Flags' section")
    args = p.parse_args(argv)
    if args.markdown:
        sys.stdout.write(flags_markdown())
        return 0
    args.write.write_text(with_flag_table(args.write.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
