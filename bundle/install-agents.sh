#!/usr/bin/env bash
# Install the coding agents the agent tests drive (Codex CLI, Claude Code) from npm into
# .venv/agents (idempotent: a second run with the pinned versions present does nothing).
# They run only against a local node, with telemetry and updates off; nothing global changes.
set -euo pipefail

say() { printf '\033[1;34m[agents]\033[0m %s\n' "$*" >&2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${MESH_LLM_AGENTS_DIR:-$root/.venv/agents}"
# Pinned: claude-code after 2.1.197 needs node >= 22; codex 0.171 needs node >= 16.
packages=("@openai/codex@0.171.0" "@anthropic-ai/claude-code@2.1.197")

installed() {  # $1: name@version -> true when that exact version is in $prefix
  local spec="$1" name="${1%@*}" version="${1##*@}" found
  found=$(node -p "require('$prefix/node_modules/$name/package.json').version" 2>/dev/null || true)
  [ "$found" = "$version" ]
}

if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: install Node.js 18 or newer to run the agent tests" >&2
  exit 1
fi

missing=()
for spec in "${packages[@]}"; do
  installed "$spec" || missing+=("$spec")
done
if [ "${#missing[@]}" -eq 0 ]; then
  say "present in $prefix: ${packages[*]}"
  exit 0
fi

say "installing ${missing[*]} into $prefix"
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "${packages[@]}" >/dev/null
for spec in "${packages[@]}"; do
  installed "$spec" || { echo "npm finished but $spec is not in $prefix" >&2; exit 1; }
done
say "installed: $("$prefix/node_modules/.bin/codex" --version 2>/dev/null || echo codex), $("$prefix/node_modules/.bin/claude" --version 2>/dev/null || echo claude)"
