#!/usr/bin/env bash
# Run the whole suite with the project's venv: lint, fast pure tests first, then real processes.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py="$root/.venv/bin/python"
[ -x "$py" ] || { echo "run bash bundle/setup.sh first" >&2; exit 1; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
"$root/.venv/bin/ruff" check mesh_llm tests benchmarks
"$root/.venv/bin/ruff" format --check mesh_llm tests benchmarks
"$root/.venv/bin/mypy" mesh_llm
"$py" -m pytest -q tests/unit tests/integration "$@"
# The console's browser tests drive Debian's Chromium (never a downloaded browser build).
if [ -f "$root/bundle/install-browser.sh" ]; then bash "$root/bundle/install-browser.sh"; fi
# The NAT lab (tests/natlab.py) builds its routers with nftables.
if [ -f "$root/bundle/install-nat.sh" ]; then bash "$root/bundle/install-nat.sh"; fi
"$py" -m pytest -q tests/e2e "$@"
