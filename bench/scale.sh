#!/usr/bin/env bash
# Horizontal scaling on one machine, honestly: each barge worker runs in its own network
# namespace behind its own bandwidth-capped link (veth + tc tbf, both directions), the S3 server
# (Garage) in another namespace, PostgreSQL (the shared journal) on the bridge. One object is
# submitted once per round and split across 1, 2 and 4 workers, started SCALE_STAGGER seconds
# apart (a worker that joins late must still find parts to claim). The table reports aggregate
# throughput, x one worker, and the efficiency against the best the workers could do from the
# moments they started: T* where the sum over workers of (T* - start_i) x one worker's rate
# moves the object; efficiency = T* / the time taken. With no stagger that is N x one worker.
#
#   sudo bench/scale.sh            (root: namespaces and tc need it)
#
# Knobs: SCALE_RATE (per-worker link, default 100mbit), SCALE_SIZES (head -c syntax, default
# "400M 1G": 50 and 128 parts), SCALE_WORKERS (default "1 2 4"), SCALE_PART (default 8MiB),
# SCALE_STAGGER (seconds between worker starts, default 3), SCALE_LOGS (a folder to keep the
# workers' debug logs in).
# Writes bench/results/scale.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RATE="${SCALE_RATE:-100mbit}"
SIZES="${SCALE_SIZES:-${SCALE_SIZE:-400M 1G}}"
STAGGER="${SCALE_STAGGER:-3}"
WORKERS="${SCALE_WORKERS:-1 2 4}"
PART="${SCALE_PART:-8MiB}"
NET=10.77.0
BR=bargebr0
WORK="$(mktemp -d /tmp/barge-scale.XXXXXX)"
OUT="$ROOT/bench/results/scale.md"
log() { echo "scale: $*" >&2; }
# shellcheck source=scripts/garage-up.sh
source "$ROOT/scripts/garage-up.sh"

[[ $EUID -eq 0 ]] || { echo "bench/scale.sh needs root (network namespaces, tc)" >&2; exit 2; }
command -v ip >/dev/null && command -v tc >/dev/null \
  || { apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null; }

GARAGE="$(scripts/testbed.sh install)"
cargo build --release --locked -p barge-cli >&2
BARGE="$ROOT/target/release/barge"
MAX_N=0
for n in $WORKERS; do (( n > MAX_N )) && MAX_N=$n; done

cleanup() {
  set +e
  [[ -n "${SCALE_LOGS:-}" ]] && mkdir -p "$SCALE_LOGS" && cp "$WORK"/worker-*.log "$SCALE_LOGS"/ 2>/dev/null
  pkill -f "$WORK/garage.toml" 2>/dev/null
  [[ -f "$WORK/pg/bin" ]] && runuser -u postgres -- "$(cat "$WORK/pg/bin")/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1
  for i in $(seq 1 "$MAX_N"); do ip netns del "bw$i" 2>/dev/null; done
  ip netns del bs3 2>/dev/null
  ip link del "$BR" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- network: a bridge in the root namespace; the server and each worker hang off it --------
ip link add "$BR" type bridge
ip addr add "$NET.1/24" dev "$BR"
ip link set "$BR" up
attach() { # attach NS IP [RATE]
  local ns="$1" addr="$2" rate="${3:-}"
  ip netns add "$ns"
  ip link add "v$ns" type veth peer name eth0 netns "$ns"
  ip link set "v$ns" master "$BR" up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  if [[ -n "$rate" ]]; then
    # Uploads leave the worker through its eth0; downloads reach it through the bridge side.
    ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 1mb latency 100ms
    tc qdisc add dev "v$ns" root tbf rate "$rate" burst 1mb latency 100ms
  fi
}
attach bs3 "$NET.2"
for i in $(seq 1 "$MAX_N"); do attach "bw$i" "$NET.$((10 + i))" "$RATE"; done

# --- the S3 server, in its own namespace ------------------------------------------------------
hex() { python3 -c "import secrets; print(secrets.token_hex($1))"; }
mkdir -p "$WORK/meta" "$WORK/data"
cat >"$WORK/garage.toml" <<EOF
metadata_dir = "$WORK/meta"
data_dir = "$WORK/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "$NET.2:3901"
rpc_public_addr = "$NET.2:3901"
rpc_secret = "$(hex 32)"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "$NET.2:3900"
root_domain = ".s3.localhost"
EOF
RUST_LOG=warn ip netns exec bs3 "$GARAGE" -c "$WORK/garage.toml" server >"$WORK/garage.log" 2>&1 &
g() { ip netns exec bs3 "$GARAGE" -c "$WORK/garage.toml" "$@"; }
node="$(garage_node_id g)" || fail_with_log "Garage did not start in namespace bs3:" "$WORK/garage.log"
g layout assign -z dc1 -c 20G "${node%@*}" >/dev/null
g layout apply --version 1 >/dev/null
# Two keys: source and destination are two "accounts" on one server, so barge cannot copy
# server-side and every byte crosses the workers' links.
SRC_ID="GK$(hex 12)"; SRC_SECRET="$(hex 32)"; DST_ID="GK$(hex 12)"; DST_SECRET="$(hex 32)"
g key import --yes -n src "$SRC_ID" "$SRC_SECRET" >/dev/null
g key import --yes -n dst "$DST_ID" "$DST_SECRET" >/dev/null
g bucket create src >/dev/null
g bucket create dst >/dev/null
g bucket allow --read --write src --key src >/dev/null
g bucket allow --read --write dst --key dst >/dev/null
wait_for_port "$NET.2" 3900 \
  || fail_with_log "Garage answers over RPC but nothing listens on $NET.2:3900:" "$WORK/garage.log"
export SRC_ID SRC_SECRET DST_ID DST_SECRET
cat >"$WORK/config.toml" <<EOF
[connections.src]
endpoint = "http://$NET.2:3900"
region = "us-east-1"
access_key_id_env = "SRC_ID"
secret_access_key_env = "SRC_SECRET"

[connections.dst]
endpoint = "http://$NET.2:3900"
region = "us-east-1"
access_key_id_env = "DST_ID"
secret_access_key_env = "DST_SECRET"
EOF
export BARGE_CONFIG="$WORK/config.toml"

# --- the shared journal: a throwaway PostgreSQL on the bridge -----------------------------------
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | tail -1)"
mkdir -p "$WORK/pg" && chmod 755 "$WORK" && chown postgres "$WORK/pg" && chmod 700 "$WORK/pg"
echo "$PGBIN" >"$WORK/pg/bin"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U barge --no-sync >/dev/null
echo "host all all $NET.0/24 trust" >>"$WORK/pg/data/pg_hba.conf"
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
  -o "-p 5499 -k $WORK/pg -c listen_addresses=$NET.1 -c fsync=off -c max_connections=200" start >/dev/null
runuser -u postgres -- "$PGBIN/createdb" -h "$NET.1" -p 5499 -U barge barge
export BARGE_JOURNAL="postgres://barge@$NET.1:5499/barge"

{
  echo "# Horizontal scaling: one object split across N workers started ${STAGGER}s apart"
  echo
  echo "$(date +%F), commit $(git rev-parse --short HEAD), $(nproc) cores. Each worker in its own network namespace behind a $RATE link each way (tc tbf); Garage in another namespace; PostgreSQL journal on the bridge; $PART parts; data flows through the workers (two keys, no server-side copy). Efficiency: the best finish time the workers' start times allow at one worker's rate, over the time taken."
} >"$OUT"

for SIZE in $SIZES; do
  log "putting a $SIZE source object"
  head -c "$SIZE" /dev/urandom >"$WORK/obj"
  BYTES=$(stat -c %s "$WORK/obj")
  "$BARGE" --journal none cp -q "$WORK/obj" "src:src/obj-$SIZE"
  rm -f "$WORK/obj"

  results=()
  for n in $WORKERS; do
    q="scale-$SIZE-$n"
    id="$("$BARGE" submit "src:src/obj-$SIZE" "dst:dst/obj-$SIZE-$n" --queue "$q" --part-size "$PART")"
    log "$SIZE: $n worker(s) on transfer $id"
    t0=$(date +%s.%N)
    pids=()
    for i in $(seq 1 "$n"); do
      (( i > 1 )) && sleep "$STAGGER"
      ip netns exec "bw$i" "$BARGE" -vv worker --queue "$q" --exit-when-idle --concurrency 8 \
        --id "bw$i" 2>"$WORK/worker-$SIZE-$n-$i.log" &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    t1=$(date +%s.%N)
    state="$("$BARGE" status "$id" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["transfer"]["state"])')"
    [[ "$state" == done ]] || fail_with_log "transfer $id ended $state" "$WORK"/worker-"$SIZE"-"$n"-*.log
    "$BARGE" --journal none verify "src:src/obj-$SIZE" "dst:dst/obj-$SIZE-$n" >/dev/null \
      || { log "dst/obj-$SIZE-$n differs from the source"; exit 1; }
    secs=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    results+=("$n $secs")
    log "$SIZE, $n worker(s): ${secs}s"
  done

  python3 - "$BYTES" "$STAGGER" "${results[@]}" >>"$OUT" <<'PY'
import sys
size, stagger = int(sys.argv[1]), float(sys.argv[2])
rows = [r.split() for r in sys.argv[3:]]
one = None
print(f"\n## {size / 2**20:.0f} MiB\n")
print("| workers | seconds | aggregate MiB/s | x one worker | best possible s | efficiency |")
print("|---:|---:|---:|---:|---:|---:|")
for n, secs in rows:
    n, secs = int(n), float(secs)
    thr = size / secs
    if one is None:
        one = thr if n == 1 else thr / n
    # The finish time T* with every worker moving at one worker's rate from its start.
    starts = [i * stagger for i in range(n)]
    lo, hi = 0.0, size / one + starts[-1]
    for _ in range(100):
        mid = (lo + hi) / 2
        if sum(max(0.0, mid - s) for s in starts) * one >= size:
            hi = mid
        else:
            lo = mid
    print(f"| {n} | {secs:.1f} | {thr / 2**20:.1f} | {thr / one:.2f} | {hi:.1f} | "
          f"{hi / secs * 100:.0f}% |")
PY
done
cat "$OUT"
