#!/usr/bin/env bash
# The test command: installs the real servers the tests use (when it can), then runs every
# test of the workspace. Tests that need a server start it themselves on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v openssl >/dev/null; }

if ! have_postgres; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing PostgreSQL for the database tests…"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql openssl >/dev/null
  else
    echo "NOTE: PostgreSQL is not installed; its tests will be skipped (they fail under CI=true)." >&2
  fi
fi

exec cargo test --workspace --locked "$@"
