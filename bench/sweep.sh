#!/usr/bin/env bash
# Part size x concurrency sweep for barge's defaults: scenario 1 (one object between the two
# local servers) and scenario 4 (local file to S3), each setting once per round.
# Writes bench/results/sweep.md. SWEEP_SIZE (default 1GiB), SWEEP_ROUNDS (default 2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SIZE="${SWEEP_SIZE:-1GiB}"
ROUNDS="${SWEEP_ROUNDS:-2}"
cargo build --release --locked -p barge-cli
scripts/testbed.sh start
WORK="$(mktemp -d)"
trap 'scripts/testbed.sh stop; rm -rf "$WORK"' EXIT
# shellcheck disable=SC1091
source .testbed/env
scripts/testbed.sh barge-config >"$WORK/config.toml"
export BARGE_CONFIG="$WORK/config.toml" BARGE_JOURNAL="$WORK/journal.sqlite"
B="$ROOT/target/release/barge"
bytes="$(python3 -c "import sys; s=sys.argv[1]; print(int(float(s[:-3])*{'KiB':1<<10,'MiB':1<<20,'GiB':1<<30}[s[-3:]]))" "$SIZE")"
head -c "$bytes" /dev/urandom >"$WORK/in.bin"
"$B" cp "$WORK/in.bin" a:src/sweep/in.bin --quiet

out="$ROOT/bench/results/sweep.md"
mkdir -p "$(dirname "$out")"
{
  echo "Sweep on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), $SIZE, $ROUNDS round(s), median MiB/s"
  echo
  echo "| part size | concurrency | A to B MiB/s | local to B MiB/s |"
  echo "|---|---|---|---|"
} >"$out"
for ps in 8MiB 16MiB 32MiB 64MiB; do
  for c in 4 8 16 32; do
    mem="$(python3 -c "print(max(512, int('$ps'[:-3]) * $c * 2))")MiB"
    r1=(); r2=()
    for _ in $(seq "$ROUNDS"); do
      t0=$(date +%s.%N); "$B" cp a:src/sweep/in.bin b:dst/sweep/x --part-size "$ps" --concurrency "$c" --max-memory "$mem" --quiet --journal none; t1=$(date +%s.%N)
      r1+=("$(python3 -c "print($bytes/($t1-$t0)/1048576)")")
      t0=$(date +%s.%N); "$B" cp "$WORK/in.bin" b:dst/sweep/y --part-size "$ps" --concurrency "$c" --max-memory "$mem" --quiet --journal none; t1=$(date +%s.%N)
      r2+=("$(python3 -c "print($bytes/($t1-$t0)/1048576)")")
    done
    m1="$(python3 -c "import statistics,sys; print(round(statistics.median(map(float,sys.argv[1:]))))" "${r1[@]}")"
    m2="$(python3 -c "import statistics,sys; print(round(statistics.median(map(float,sys.argv[1:]))))" "${r2[@]}")"
    echo "| $ps | $c | $m1 | $m2 |" | tee -a "$out"
  done
done
