#!/usr/bin/env bash
# Install Debian's Chromium for the console's browser tests (idempotent).
# Playwright drives it through executable_path; we never run `playwright install`, which would
# download a browser build from a CDN.
set -euo pipefail

say() { printf '\033[1;34m[browser]\033[0m %s\n' "$*" >&2; }

if [ -x /usr/bin/chromium ]; then
  say "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo unknown version)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "no /usr/bin/chromium and no apt-get: install Chromium with your package manager" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "installing chromium needs root (or sudo)" >&2; exit 1; }
  sudo=(sudo)
fi

say "installing Debian's chromium package"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq chromium >/dev/null
[ -x /usr/bin/chromium ] || { echo "apt-get finished but /usr/bin/chromium is missing" >&2; exit 1; }
say "installed: $(/usr/bin/chromium --version 2>/dev/null || echo unknown version)"
