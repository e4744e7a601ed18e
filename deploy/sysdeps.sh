#!/usr/bin/env bash
# Install the Debian packages that parts of the test suite use, when we can (root + apt-get).
# Without them those tests are skipped with a message that names the missing package.
set -u
PKGS=()
for p in "$@"; do PKGS+=("$p"); done
[ ${#PKGS[@]} -gt 0 ] || exit 0
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: not installing ${missing[*]} (needs root and apt-get); the tests that need them will be skipped"
  exit 0
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
