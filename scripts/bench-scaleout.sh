#!/usr/bin/env bash
# The scale-out benchmarks of docs/BENCHMARKS.md, in one run on this machine:
#
# 1. `shoal tasks` create→claim→finish cycles/s: embedded SQLite (in-process, as `shoal bench
#    tasks` does by default), then one and two `shoal tasks` processes on one local PostgreSQL
#    (fsync on), 64 workers spread over the replicas.
# 2. The pipeline through the frontend (`shoal bench pipeline --via frontend --target`) on a
#    deployment of separate processes: one master and one tasks replica, then two of each
#    (same k/v store, storage and worker), alternating, so the cost of balancing is measured.
#
# Usage: SHOAL_BIN=target/release/shoal scripts/bench-scaleout.sh [tasks|pipeline|all]
# Needs PostgreSQL's server binaries (apt-get install postgresql). Binds 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${SHOAL_BIN:-target/release/shoal}
# Full outputs go here too (the summary lines are printed).
RAW=${SHOAL_BENCH_RAW:-/dev/null}
WHAT=${1:-all}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$BIN" ] || { echo "no shoal binary at $BIN (cargo build --release)" >&2; exit 1; }
[ -n "$PGBIN" ] || { echo "PostgreSQL is not installed" >&2; exit 1; }

work=$(mktemp -d /tmp/shoal-scaleout.XXXXXX)
chmod 755 "$work" # the postgres user must reach its data directory
pids=()
pg_pid=
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # runuser does not pass signals on: stop the server itself.
  if [ -n "$pg_pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$work/pg/data" -m fast -w stop >/dev/null 2>&1 || true; wait "$pg_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Headings and summaries go to the raw file too, between the outputs they name.
say() { echo "$*" | tee -a "$RAW"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# PostgreSQL with its defaults for durability (fsync on, synchronous_commit on).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$work/pg"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$work/pg"
as_pg "$PGBIN/initdb" -D "$work/pg/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
PG_PORT=$(free_port)
as_pg "$PGBIN/postgres" -D "$work/pg/data" -h 127.0.0.1 -p "$PG_PORT" -k "$work/pg" \
  -c max_connections=300 >"$work/pg.log" 2>&1 &
pg_pid=$!
until "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -U postgres >/dev/null 2>&1; do sleep 0.1; done

# start NAME ARGS…: runs `shoal ARGS… --listen 127.0.0.1:PORT`; sets $URL and $PID.
start() {
  local name=$1; shift
  local port; port=$(free_port)
  RUST_LOG=warn "$BIN" "$@" --listen "127.0.0.1:$port" >"$work/$name.log" 2>&1 &
  PID=$!
  pids+=("$PID")
  URL="http://127.0.0.1:$port"
  for _ in $(seq 1 300); do
    curl -fsS "$URL/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}

bench_tasks() {
  # A database of its own, dropped at the end: vacuuming a million finished tasks would
  # otherwise weigh on whatever runs next.
  "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres tasks
  local DB="postgres://postgres@127.0.0.1:$PG_PORT/tasks"
  say "== shoal tasks: embedded SQLite (in-process)"
  RUST_LOG=warn "$BIN" bench tasks --concurrency 64 --duration 10s --backlog 10000 --rounds 3 2>/dev/null \
    | tee -a "$RAW" | grep -E '^(scenario|median +cycles)'
  start tasks-1 tasks --database-url "$DB" --data-dir "$work/t1"; T1=$URL
  say "== shoal tasks: one replica on PostgreSQL"
  RUST_LOG=warn "$BIN" bench tasks --target "$T1" --concurrency 64 --duration 10s --backlog 0 --rounds 3 2>/dev/null \
    | tee -a "$RAW" | grep -E '^(scenario|median +cycles)'
  start tasks-2 tasks --database-url "$DB" --data-dir "$work/t2"; T2=$URL
  say "== shoal tasks: two replicas on one PostgreSQL"
  RUST_LOG=warn "$BIN" bench tasks --target "$T1,$T2" --concurrency 64 --duration 10s --backlog 0 --rounds 3 2>/dev/null \
    | tee -a "$RAW" | grep -E '^(scenario|median +cycles)'
  kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=()
  "$PGBIN/dropdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres tasks
}

bench_pipeline() {
  # A database of its own, as the tasks benchmark has.
  "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres pipeline
  local schema_db="postgres://postgres@127.0.0.1:$PG_PORT/pipeline"
  start kv kv --data-dir "$work/kv"; KV=$URL
  start tasks-1 tasks --kv "$KV" --database-url "$schema_db" --data-dir "$work/pt1"
  start storage storage --kv "$KV" --data-dir "$work/storage"
  start master-1 master --kv "$KV"
  RUST_LOG=warn "$BIN" worker --kv "$KV" --data-dir "$work/worker" --threads 1 >"$work/worker.log" 2>&1 &
  pids+=($!)
  start frontend frontend --kv "$KV"; FRONTEND=$URL
  local extra=()
  # The two shapes alternate, and their order flips every round, so a drift of the machine
  # (or of the growing database) over the run weighs on both alike.
  for round in 1 2 3 4; do
    local shapes="one two"
    [ $((round % 2)) = 0 ] && shapes="two one"
    for shape in $shapes; do
      if [ "$shape" = two ]; then
        start tasks-2 tasks --kv "$KV" --database-url "$schema_db" --data-dir "$work/pt2"; extra+=("$PID")
        start master-2 master --kv "$KV"; extra+=("$PID")
      fi
      until curl -fsS "$FRONTEND/readyz" >/dev/null 2>&1; do sleep 0.1; done
      sleep 1 # the watches have seen every instance
      say "== pipeline via the frontend, round $round: $shape master(s) and $shape tasks replica(s)"
      RUST_LOG=warn "$BIN" bench pipeline --target "$FRONTEND" --via frontend --threads 1 \
        --images 400 --size 512x512 --concurrency 8 --rounds 1 --no-baseline --latency-images 0 2>/dev/null \
        | tee -a "$RAW" | grep -E '^median pipeline' | tee -a "$work/pipeline-$shape"
      if [ "$shape" = two ]; then
        kill "${extra[@]}"; wait "${extra[@]}" 2>/dev/null || true; extra=()
        # Until their registrations are gone, the others would still try the stopped ones.
        sleep 1
      fi
    done
  done
  # Per round, two over one; the median of the four.
  paste <(awk '{print $3}' "$work/pipeline-one") <(awk '{print $3}' "$work/pipeline-two") \
    | awk '{printf "round %d: two/one %.3f\n", NR, $2/$1}' | tee "$work/ratios" | tee -a "$RAW"
  awk '{print $4}' "$work/ratios" | sort -n | awk '{r[NR]=$1} END {printf "median two/one %.3f\n", (r[int((NR+1)/2)]+r[int(NR/2)+1])/2}' | tee -a "$RAW"
}

case "$WHAT" in
  tasks) bench_tasks ;;
  pipeline) bench_pipeline ;;
  all) bench_tasks; bench_pipeline ;;
  *) echo "usage: $0 [tasks|pipeline|all]" >&2; exit 2 ;;
esac
