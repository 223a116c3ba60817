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

# The browser test drives Debian's Chromium through chromedriver.
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } &&
   [ -z "${SHOAL_TEST_CHROMEDRIVER:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Chromium for the browser test…"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "NOTE: Chromium is not installed; the browser test will be skipped (it fails under CI=true)." >&2
  fi
fi

# The NATS tests run against Debian's nats-server (with JetStream).
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ] &&
   [ -z "${SHOAL_TEST_NATS_SERVER:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing nats-server for the NATS tests…"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  else
    echo "NOTE: nats-server is not installed; the NATS tests will be skipped (they fail under CI=true)." >&2
  fi
fi

# The S3 backend's tests run against moto_server (PyPI moto[server]) in its own virtualenv, so
# nothing is installed into the system Python. It is found there by the test kit.
MOTO_VENV="${HOME}/.cache/shoal/tools/moto"
if [ -z "${SHOAL_TEST_MOTO_SERVER:-}" ] && [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  echo "installing moto_server for the S3 tests…"
  if python3 -m venv "$MOTO_VENV" >/dev/null 2>&1 || {
      [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
      { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; } &&
      python3 -m venv "$MOTO_VENV"; }; then
    "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5,<6' ||
      echo "NOTE: could not install moto[server]; the S3 tests will be skipped (they fail under CI=true)." >&2
  else
    echo "NOTE: cannot create a Python virtualenv; the S3 tests will be skipped (they fail under CI=true)." >&2
  fi
fi

exec cargo test --workspace --locked "$@"
