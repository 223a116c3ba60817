#!/usr/bin/env bash
# End-to-end test of `shoal gossip` on five simulated hosts.
#
# Each node runs in its own Linux network namespace with its own address on a private
# bridge, so the nodes talk over real (virtual) Ethernet rather than loopback: UDP for SWIM,
# HTTP for the API. The bridge lives in a namespace of its own too, so the root namespace's
# interfaces, routes and firewall are never touched, and two runs at once cannot collide
# (every name carries this script's pid).
#
# Checks, in order: the five nodes form one cluster (a chain of joins, 1 <- 2 <- ... <- 5),
# a set on one node reaches all, a killed node is declared dead, a node stopped with
# SIGTERM is reported as left, and a set still propagates afterwards.
#
# Needs root (or at least the right to run `ip netns add`). Exit codes: 0 passed, 1 failed,
# 77 skipped (no permission for namespaces; set SHOAL_REQUIRE_NETNS=1 to fail instead).
#
# Environment:
#   SHOAL_BIN             the shoal binary (default: ${CARGO_TARGET_DIR:-target}/release/shoal)
#   SHOAL_NETNS_SUBNET    first three octets of the private /24 (default: 10.201.0); it only
#                         exists inside the namespaces, so it cannot clash with the host's
#   SHOAL_REQUIRE_NETNS=1 fail rather than skip when namespaces are not available
#   KEEP_LOGS=1           keep the node logs (their directory is printed)
set -Eeuo pipefail

# SHOAL_BIN is taken relative to where the script is called from; the default relative to
# the repository root, where the script works from.
if [ -n "${SHOAL_BIN:-}" ] && [[ "$SHOAL_BIN" != /* ]]; then
  SHOAL_BIN="$PWD/$SHOAL_BIN"
fi
cd "$(dirname "$0")/.."

readonly NODES=5
readonly SWIM_PORT=7946
readonly HTTP_PORT=8081
# A fixed key, so the authenticated datagram path is the one under test.
readonly CLUSTER_KEY="gossip-netns-test-cluster-key"
readonly SUBNET="${SHOAL_NETNS_SUBNET:-10.201.0}"
# The pid makes every namespace name unique among concurrent runs.
readonly PREFIX="sg$$"
readonly BRIDGE_NS="$PREFIX-br"

BIN="${SHOAL_BIN:-${CARGO_TARGET_DIR:-target}/release/shoal}"
LOG_DIR=""
PY=""
CREATED_NS=()   # namespaces this run created, deleted by cleanup
declare -A PIDS=()  # node index -> pid of its shoal process
FAILED=0        # set once a FAIL line has been printed, so it is printed only once

say() { echo "gossip-netns: $*"; }

dump_logs() {
  [ -n "$LOG_DIR" ] && [ -d "$LOG_DIR" ] || return 0
  local f
  for f in "$LOG_DIR"/node-*.log; do
    [ -e "$f" ] || continue
    echo "----- $(basename "$f") -----" >&2
    cat "$f" >&2 || true
  done
  echo "----- end of logs -----" >&2
}

# Prints the logs of every node, then the reason as the last line, and exits 1.
fail() {
  FAILED=1
  dump_logs
  echo "gossip-netns: FAIL: $*" >&2
  exit 1
}

# Not being allowed to create namespaces is an environment limit, not a bug: skip (77).
skip() {
  if [ "${SHOAL_REQUIRE_NETNS:-0}" = 1 ]; then
    fail "$* (SHOAL_REQUIRE_NETNS=1)"
  fi
  echo "gossip-netns: SKIP: $*" >&2
  exit 77
}

# Reports the line of an unexpected error; in a command substitution it only lets the
# subshell fail, so the caller reports it once.
on_err() {
  local line=$1 cmd=$2
  [ "$BASH_SUBSHELL" -eq 0 ] || return 0
  fail "unexpected error at line $line: $cmd"
}

# Whether pid is one of the shoal processes this script started (and not a reused pid).
is_our_shoal() {
  local pid=$1
  [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$BIN" ]
}

# Always runs: stops the nodes this script started, by pid, then deletes its namespaces,
# which takes their veths and the bridge with them.
cleanup() {
  local rc=$? i pid ns tries
  trap - ERR
  set +e
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ "$FAILED" = 0 ]; then
    FAILED=1
    if [ "$rc" -eq 130 ] || [ "$rc" -eq 143 ]; then
      # Stopped on purpose: the logs are not the point (KEEP_LOGS=1 keeps them).
      echo "gossip-netns: FAIL: interrupted" >&2
    else
      dump_logs
      echo "gossip-netns: FAIL: unexpected exit (status $rc)" >&2
    fi
  fi
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[$i]}
    is_our_shoal "$pid" && kill -TERM "$pid" 2>/dev/null
  done
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[$i]}
    # A graceful leave takes a moment; after 3 s it is no longer worth waiting for.
    for ((tries = 0; tries < 30; tries++)); do
      is_our_shoal "$pid" || break
      sleep 0.1
    done
    is_our_shoal "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  for ns in "${CREATED_NS[@]}"; do
    ip netns delete "$ns" 2>/dev/null || echo "gossip-netns: warning: could not delete namespace $ns" >&2
  done
  if [ -n "$LOG_DIR" ] && [ -d "$LOG_DIR" ]; then
    if [ "${KEEP_LOGS:-0}" = 1 ]; then
      echo "gossip-netns: logs kept in $LOG_DIR" >&2
    else
      rm -rf "$LOG_DIR"
    fi
  fi
  exit "$rc"
}

trap cleanup EXIT
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR
# Turn signals into a normal exit so the EXIT trap cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers -----------------------------------------------------------------------------

now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }

# Formats milliseconds as seconds with one decimal, e.g. 4321 -> 4.3s.
secs() { printf '%d.%ds' $(($1 / 1000)) $(($1 % 1000 / 100)); }

ns_of() { echo "$PREFIX-$1"; }
ip_of() { echo "$SUBNET.$1"; }
swim_of() { echo "$(ip_of "$1"):$SWIM_PORT"; }
http_of() { echo "http://$(ip_of "$1"):$HTTP_PORT"; }

# curl from inside node i's namespace, as a client on that host would. Prints the body, or
# nothing when the node does not answer; never fails, so it can be polled. The proxy is
# bypassed: a proxy from the environment is unreachable from inside the namespaces.
node_curl() {
  local i=$1
  shift
  ip netns exec "$(ns_of "$i")" curl -sf --noproxy '*' --connect-timeout 1 --max-time 2 "$@" \
    2>/dev/null || true
}

node_get() { node_curl "$1" "$(http_of "$1")/get"; }
node_members() { node_curl "$1" "$(http_of "$1")/members"; }

# Number of members node i reports as alive (itself included); 0 when it does not answer.
alive_count() {
  node_members "$1" | "$PY" -c '
import json, sys
try:
    members = json.load(sys.stdin)["members"]
except Exception:
    print(0)
else:
    print(sum(m["state"] == "alive" for m in members))'
}

# State node i reports for the member at cluster address addr: alive, suspect, dead, left,
# "absent" when it is not listed, "unreachable" when node i does not answer.
state_seen_by() {
  node_members "$1" | "$PY" -c '
import json, sys
try:
    members = json.load(sys.stdin)["members"]
except Exception:
    print("unreachable")
else:
    print(next((m["state"] for m in members if m["address"] == sys.argv[1]), "absent"))' "$2"
}

# Polls the predicate (a command) every interval_ms until it succeeds or timeout_ms has
# passed. Sets ELAPSED_MS to the time it took; returns 1 on timeout.
ELAPSED_MS=0
wait_until() {
  local timeout_ms=$1 interval_ms=$2 start
  shift 2
  start=$(now_ms)
  while true; do
    if "$@"; then
      ELAPSED_MS=$(( $(now_ms) - start ))
      return 0
    fi
    ELAPSED_MS=$(( $(now_ms) - start ))
    [ "$ELAPSED_MS" -lt "$timeout_ms" ] || return 1
    sleep "$(printf '0.%03d' "$interval_ms")"
  done
}

# --- predicates for wait_until -------------------------------------------------------------

all_see_alive() {
  local i
  for i in "$@"; do
    [ "$(alive_count "$i")" = "$NODES" ] || return 1
  done
}

all_get() {
  local want=$1 i
  shift
  for i in "$@"; do
    [ "$(node_get "$i")" = "$want" ] || return 1
  done
}

# all_report STATE NODE_INDEX OBSERVER...: every observer reports that node in that state.
all_report() {
  local want=$1 addr
  addr=$(swim_of "$2")
  shift 2
  local i
  for i in "$@"; do
    [ "$(state_seen_by "$i" "$addr")" = "$want" ] || return 1
  done
}

healthy() { [ "$(node_curl "$1" "$(http_of "$1")/healthz")" = ok ]; }

# One line per observer, for failure messages: what each one reports about a node.
states_report() {
  local addr out="" i
  addr=$(swim_of "$1")
  shift
  for i in "$@"; do
    out+="node $i: $(state_seen_by "$i" "$addr"); "
  done
  echo "${out%; }"
}

# --- preconditions -------------------------------------------------------------------------

check_binary() {
  [ -x "$BIN" ] || fail "shoal binary not found or not executable: $BIN (build it with 'cargo build --release', or set SHOAL_BIN)"
  # An absolute path, so /proc/PID/exe can be compared with it.
  BIN=$(readlink -f "$BIN")
  "$BIN" gossip --help >/dev/null 2>&1 || fail "$BIN does not run 'shoal gossip --help'"
}

check_subnet() {
  [[ "$SUBNET" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] ||
    fail "SHOAL_NETNS_SUBNET must be three octets such as 10.201.0, not '$SUBNET'"
  local octet
  for octet in "${BASH_REMATCH[@]:1}"; do
    [ "$octet" -le 255 ] || fail "SHOAL_NETNS_SUBNET has an octet above 255: '$SUBNET'"
  done
}

check_permissions() {
  command -v ip >/dev/null || skip "the 'ip' command (iproute2) is not installed"
  [ "$(id -u)" = 0 ] || skip "network namespaces need root (run as root, e.g. with sudo)"
}

# curl is what a client on each simulated host would use; install it when it is missing.
ensure_curl() {
  command -v curl >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing curl…"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }; then
      fail "could not install curl with apt-get"
    fi
  fi
  command -v curl >/dev/null || fail "curl is required and could not be installed"
}

# The pyenv-style shim in front of python3 can take a tenth of a second per call, which
# would blur the timings measured by polling; call the interpreter itself.
find_python() {
  command -v python3 >/dev/null || fail "python3 is required to read the JSON of /members"
  PY=$(python3 -c 'import sys; print(sys.executable)')
  [ -x "$PY" ] || fail "could not locate the python3 interpreter"
}

# Variables shoal reads as defaults would change what the nodes are told on the command
# line (an inherited SHOAL_TOKEN would lock curl out, CLUSTER_ADDR would add a join).
scrub_environment() {
  local var
  for var in $(compgen -e); do
    case $var in
      SHOAL_GOSSIP_* | SHOAL_TOKEN | SHOAL_LOG_FORMAT | CLUSTER_ADDR | ADVERTISE_ADDR) unset "$var" ;;
    esac
  done
}

# --- topology ------------------------------------------------------------------------------

add_ns() {
  local ns=$1 err
  if ! err=$(ip netns add "$ns" 2>&1); then
    if ip netns list 2>/dev/null | grep -qw -- "$ns"; then
      fail "namespace $ns already exists (left over from an earlier run with the same pid?)"
    fi
    skip "cannot create network namespaces: ip netns add: $err"
  fi
  CREATED_NS+=("$ns")
  ip -n "$ns" link set lo up
}

# A bridge in its own namespace, one namespace per node, each linked to the bridge by a
# veth pair: the node's end is eth0 (10.x.y.i/24), the bridge's end is pI. Interface names
# are per namespace, so these short ones cannot clash with the host's or another run's.
build_topology() {
  local i ns
  add_ns "$BRIDGE_NS"
  ip -n "$BRIDGE_NS" link add br0 type bridge
  ip -n "$BRIDGE_NS" link set br0 up
  for ((i = 1; i <= NODES; i++)); do
    ns=$(ns_of "$i")
    add_ns "$ns"
    ip -n "$ns" link add eth0 type veth peer name "p$i" netns "$BRIDGE_NS"
    ip -n "$BRIDGE_NS" link set "p$i" master br0 up
    ip -n "$ns" addr add "$(ip_of "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

# --- nodes ---------------------------------------------------------------------------------

# `ip netns exec` enters the namespace and then execs the command, so $! ends up being the
# shoal process itself. That is checked rather than assumed: should ip ever stay in
# between, the node's pid is that of its child.
resolve_pid() {
  local pid=$1 tries child
  for ((tries = 0; tries < 50; tries++)); do
    [ -d "/proc/$pid" ] || break
    if is_our_shoal "$pid"; then
      echo "$pid"
      return 0
    fi
    child=$(pgrep -P "$pid" 2>/dev/null | head -n 1 || true)
    if [ -n "$child" ] && is_our_shoal "$child"; then
      echo "$child"
      return 0
    fi
    sleep 0.02
  done
  return 1
}

start_node() {
  local i=$1 log pid real
  local args=(gossip
    --name "node-$i"
    --advertise "$(swim_of "$i")"
    --listen "$(ip_of "$i"):$HTTP_PORT"
    --cluster-key "$CLUSTER_KEY"
    --log-format text)
  # A chain, as in the tutorial's docker example: each node knows only the one before it.
  [ "$i" -gt 1 ] && args+=(--join "$(swim_of $((i - 1)))")
  log="$LOG_DIR/node-$i.log"
  ip netns exec "$(ns_of "$i")" "$BIN" "${args[@]}" >"$log" 2>&1 &
  pid=$!
  PIDS[$i]=$pid
  real=$(resolve_pid "$pid") || fail "node $i (pid $pid) exited or is not the shoal process"
  PIDS[$i]=$real
  # The next node joins through this one, so wait until it is serving.
  wait_until 10000 100 node_alive_and_healthy "$i" ||
    fail "node $i did not answer /healthz within 10 s (running: $(is_our_shoal "${PIDS[$i]}" && echo yes || echo no))"
}

stop_node() {
  local i=$1 sig=$2
  is_our_shoal "${PIDS[$i]}" || fail "node $i is not running before it is stopped"
  kill "-$sig" "${PIDS[$i]}"
}

node_gone() { ! is_our_shoal "${PIDS[$1]}"; }

# Waits (bounded) for a stopped node to exit and collects its status into EXIT_STATUS.
EXIT_STATUS=""
reap_node() {
  local i=$1 pid=${PIDS[$1]}
  wait_until 5000 100 node_gone "$i" || fail "node $i was still running 5 s after it was stopped"
  EXIT_STATUS=0
  wait "$pid" 2>/dev/null || EXIT_STATUS=$?
  unset "PIDS[$i]"
}

# kill -9 cannot be ignored, so wait for the process at once: reaped right away, it also
# spares the output bash's "Killed" job notice.
kill_node() {
  local i=$1 pid=${PIDS[$1]}
  stop_node "$i" KILL
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$i]"
}
node_alive_and_healthy() { is_our_shoal "${PIDS[$1]}" && healthy "$1"; }

# --- the test ------------------------------------------------------------------------------

main() {
  check_binary
  check_subnet
  check_permissions
  scrub_environment
  ensure_curl
  find_python
  LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gossip-netns.XXXXXX")

  say "building $NODES hosts on $SUBNET.0/24 (namespaces $PREFIX-1..$PREFIX-$NODES, bridge in $BRIDGE_NS)"
  build_topology

  say "starting $NODES nodes ($BIN)"
  local t0 i join_ms set_ms dead_ms left_ms set2_ms
  t0=$(now_ms)
  for ((i = 1; i <= NODES; i++)); do
    start_node "$i"
  done

  # 1. Membership: every node sees all five alive.
  wait_until 30000 200 all_see_alive 1 2 3 4 5 || {
    local counts=""
    for ((i = 1; i <= NODES; i++)); do counts+=" node $i: $(alive_count "$i");"; done
    fail "the cluster did not form within 30 s (alive members seen by each:$counts)"
  }
  join_ms=$(( $(now_ms) - t0 ))
  say "cluster formed: every node sees $NODES alive members, $(secs "$join_ms") after the first start"

  # 2. Replication: a set on node 5 is read back on every node.
  [ "$(node_get 1)" = 42 ] || fail "node 1 does not start with the initial value 42 (got '$(node_get 1)')"
  local answer
  answer=$(node_curl 5 -X POST "$(http_of 5)/set/4242")
  [ "$answer" = 4242 ] || fail "POST /set/4242 on node 5 answered '$answer', not 4242"
  wait_until 2000 100 all_get 4242 1 2 3 4 5 || {
    local seen=""
    for ((i = 1; i <= NODES; i++)); do seen+=" node $i: '$(node_get "$i")';"; done
    fail "the value set on node 5 did not reach every node within 2 s (/get:$seen)"
  }
  set_ms=$ELAPSED_MS
  say "set 4242 on node 5: read back on all $NODES nodes after ${set_ms} ms"

  # 3. Failure detection: node 3 dies without a word; the others must declare it dead.
  local t_kill
  t_kill=$(now_ms)
  kill_node 3
  wait_until 15000 100 all_report dead 3 1 2 4 5 ||
    fail "node 3 was not reported dead by all within 15 s ($(states_report 3 1 2 4 5))"
  dead_ms=$(( $(now_ms) - t_kill ))
  [ "$dead_ms" -le 10000 ] || fail "node 3 was reported dead only after $(secs "$dead_ms") (limit 10 s)"
  say "kill -9 node 3: reported dead by nodes 1, 2, 4, 5 after $(secs "$dead_ms")"

  # 4. Graceful leave: SIGTERM makes node 4 say goodbye, so it is "left", not "dead".
  stop_node 4 TERM
  wait_until 5000 100 all_report left 4 1 2 5 ||
    fail "node 4 was not reported left by nodes 1, 2, 5 within 5 s ($(states_report 4 1 2 5))"
  left_ms=$ELAPSED_MS
  # A graceful stop is a clean exit.
  reap_node 4
  [ "$EXIT_STATUS" = 0 ] || fail "node 4 exited with status $EXIT_STATUS after SIGTERM"
  say "SIGTERM node 4: reported left by nodes 1, 2, 5 after $(secs "$left_ms"), exited with status 0"

  # 5. The three survivors still replicate.
  answer=$(node_curl 1 -X POST "$(http_of 1)/set/7")
  [ "$answer" = 7 ] || fail "POST /set/7 on node 1 answered '$answer', not 7"
  wait_until 2000 100 all_get 7 1 2 5 ||
    fail "the value set on node 1 did not reach nodes 2 and 5 within 2 s (/get: node 2 '$(node_get 2)', node 5 '$(node_get 5)')"
  set2_ms=$ELAPSED_MS
  say "set 7 on node 1: read back on nodes 2 and 5 after ${set2_ms} ms"

  say "OK (joined in $(secs "$join_ms"), set seen by all in ${set_ms} ms, dead detected in $(secs "$dead_ms"), leave seen in $(secs "$left_ms"), set after failures in ${set2_ms} ms)"
}

main "$@"
