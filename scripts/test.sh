#!/usr/bin/env bash
# Run the whole test suite: starts the S3 test servers (installing Garage once if needed),
# runs every test against them (the Rust suite, then the Airflow provider in Airflow 2.10 and
# 3.x), stops them. Extra arguments go to `cargo test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/testbed.sh start
trap 'scripts/testbed.sh stop' EXIT
# shellcheck disable=SC1091
source .testbed/env

cargo test --workspace --locked "$@"

# The Airflow provider in real Airflow, both lines (each in its own cached virtualenv).
# BARGE_TEST_AIRFLOW=0 leaves them out.
if [[ "${BARGE_TEST_AIRFLOW:-1}" != 0 ]]; then
  for v in 2.10.5 3.3.2; do
    AIRFLOW_VERSION="$v" provider/tests/run.sh
  done
fi
