#!/usr/bin/env bash
# `barge sync` beside `rclone sync --checksum` and `aws s3 sync`: 5,000 objects, 1% rewritten
# between two syncs, between the two Garage servers and from a local folder. Installs the peers
# (rclone from Debian, awscli and boto3 from PyPI), builds barge, starts the test bed, runs
# bench/sync.py. Writes bench/results/sync.md. SYNC_COUNT, SYNC_SIZE (bytes), SYNC_ROUNDS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v rclone >/dev/null; then
  apt-get update -qq && apt-get install -y -qq rclone >/dev/null
fi
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
python3 -m pip install -q awscli boto3
cargo build --release --locked -p barge-cli
scripts/testbed.sh start
trap 'scripts/testbed.sh stop' EXIT
# shellcheck disable=SC1091
source .testbed/env
python3 bench/sync.py
