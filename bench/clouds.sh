#!/usr/bin/env bash
# S3 to GCS and S3 to Azure: barge beside rclone, on the same data and the same servers in the
# same run (Garage as the S3 source, fake-gcs-server and Azurite as destinations: the emulators
# bound the absolute figures; the ratios and the CPU per GiB are the point). Installs rclone
# (Debian), builds barge, starts the test bed, runs bench/clouds.py. Writes
# bench/results/clouds.md. CLOUDS_SIZE (bytes, default 1 GiB), CLOUDS_ROUNDS (default 3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v rclone >/dev/null; then
  apt-get update -qq && apt-get install -y -qq rclone >/dev/null
fi
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build --release --locked -p barge-cli
BARGE_TESTBED_PG=0 BARGE_TESTBED_MOTO=0 scripts/testbed.sh start
trap 'scripts/testbed.sh stop' EXIT
# shellcheck disable=SC1091
source .testbed/env
python3 bench/clouds.py
