#!/usr/bin/env bash
# Run the whole test suite: starts the S3 test servers (installing Garage once if needed),
# runs every test against them, stops them. Extra arguments go to `cargo test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/testbed.sh start
trap 'scripts/testbed.sh stop' EXIT
# shellcheck disable=SC1091
source .testbed/env

cargo test --workspace --locked "$@"
