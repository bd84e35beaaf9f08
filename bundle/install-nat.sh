#!/usr/bin/env bash
# Install Debian's nftables for the NAT lab's tests (idempotent).
# tests/natlab.py builds home-style NAT routers in network namespaces with `nft` masquerade rules;
# the tests that use it are skipped without /usr/sbin/nft.
set -euo pipefail

say() { printf '\033[1;34m[nat]\033[0m %s\n' "$*" >&2; }

if [ -x /usr/sbin/nft ]; then
  say "nft present: $(/usr/sbin/nft --version 2>/dev/null || echo unknown version)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "no /usr/sbin/nft and no apt-get: install nftables with your package manager" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "installing nftables needs root (or sudo)" >&2; exit 1; }
  sudo=(sudo)
fi

say "installing Debian's nftables package"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq nftables >/dev/null
[ -x /usr/sbin/nft ] || { echo "apt-get finished but /usr/sbin/nft is missing" >&2; exit 1; }
say "installed: $(/usr/sbin/nft --version 2>/dev/null || echo unknown version)"
