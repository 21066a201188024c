#!/usr/bin/env bash
# `--bwlimit` held to: one object copied between the test bed's two servers (every byte read
# from one and written to the other, so both directions are paced) and uploaded from a local
# file, at several limits. The achieved rate (bytes over the command's wall time, planning and
# completion included) beside the limit. Writes bench/results/bwlimit.md.
# BW_SIZE (head -c syntax, default 256M), BW_LIMITS (default "16MiB 32MiB 64MiB").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SIZE="${BW_SIZE:-256M}"
LIMITS="${BW_LIMITS:-16MiB 32MiB 64MiB}"
OUT="$ROOT/bench/results/bwlimit.md"
cargo build --release --locked -p barge-cli >&2
BARGE="$ROOT/target/release/barge"
scripts/testbed.sh start >&2
WORK="$(mktemp -d /tmp/barge-bw.XXXXXX)"
trap 'scripts/testbed.sh stop >/dev/null 2>&1; rm -rf "$WORK"' EXIT
# shellcheck disable=SC1091
source .testbed/env
cat >"$WORK/config.toml" <<CONF
[connections.a]
endpoint = "$BARGE_TEST_A_ENDPOINT"
region = "us-east-1"
access_key_id_env = "BARGE_TEST_A_KEY_ID"
secret_access_key_env = "BARGE_TEST_A_SECRET"

[connections.b]
endpoint = "$BARGE_TEST_B_ENDPOINT"
region = "us-east-1"
access_key_id_env = "BARGE_TEST_B_KEY_ID"
secret_access_key_env = "BARGE_TEST_B_SECRET"
CONF
b() { "$BARGE" --config "$WORK/config.toml" --journal none "$@"; }
head -c "$SIZE" /dev/urandom >"$WORK/obj"
BYTES=$(stat -c %s "$WORK/obj")
KEY="bwlimit-$$"
b cp -q "$WORK/obj" "a:src/$KEY"
{
  echo "# --bwlimit: the rate achieved beside the limit"
  echo
  echo "$(date +%F), commit $(git rev-parse --short HEAD), $(nproc) cores, $((BYTES >> 20)) MiB, 8 MiB parts, Garage on loopback. Achieved: bytes over the command's wall time."
  echo
  echo "| copy | limit | seconds | achieved MiB/s | achieved / limit |"
  echo "|---|---:|---:|---:|---:|"
} >"$OUT"
for limit in $LIMITS; do
  for what in between upload; do
    case $what in
      between) src="a:src/$KEY"; dst="b:dst/$KEY-$limit" ;;
      upload) src="$WORK/obj"; dst="a:dst/$KEY-$limit" ;;
    esac
    t0=$(date +%s.%N)
    b cp -q "$src" "$dst" --bwlimit "$limit" --part-size 8MiB
    t1=$(date +%s.%N)
    python3 - "$what" "$limit" "$BYTES" "$t0" "$t1" >>"$OUT" <<'PY'
import sys
what, limit, size, t0, t1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
num = limit.lower().rstrip("/s").rstrip("ib")
rate = float(num[:-1]) * units[num[-1]] if num[-1] in units else float(num)
secs = t1 - t0
got = size / secs
print(f"| {what} | {limit}/s | {secs:.2f} | {got / 2**20:.1f} | {got / rate * 100:.1f}% |")
PY
  done
done
cat "$OUT"
