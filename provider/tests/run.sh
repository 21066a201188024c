#!/usr/bin/env bash
# The provider's tests in a real Airflow: its own virtualenv in the cache folder (Airflow 2.10.5,
# pinned dependencies that would clash with anything else), a fresh AIRFLOW_HOME with a migrated
# SQLite metadata database, barge's debug binary on the PATH, the test bed's servers (started by
# scripts/test.sh, or here when BARGE_TEST_A_ENDPOINT is unset).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
AIRFLOW_VERSION="${AIRFLOW_VERSION:-2.10.5}"
AF="${BARGE_CACHE:-$HOME/.cache/barge}/airflow-$AIRFLOW_VERSION"
if [[ ! -x "$AF/bin/airflow" ]]; then
  python3 -m venv "$AF"
  "$AF/bin/pip" install -q "apache-airflow==$AIRFLOW_VERSION" psycopg2-binary boto3
fi
"$AF/bin/pip" install -q pytest -e provider
cargo build --locked -p barge-cli
if [[ -z "${BARGE_TEST_A_ENDPOINT:-}" ]]; then
  BARGE_TESTBED_MOTO=0 BARGE_TESTBED_CLOUDS=0 scripts/testbed.sh start
  trap 'scripts/testbed.sh stop' EXIT
  # shellcheck disable=SC1091
  source .testbed/env
fi
HOME_DIR="$(mktemp -d /tmp/barge-airflow.XXXXXX)"
export AIRFLOW_HOME="$HOME_DIR" AIRFLOW__CORE__LOAD_EXAMPLES=False \
  AIRFLOW__CORE__UNIT_TEST_MODE=True AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING
export PATH="$ROOT/target/debug:$PATH"
"$AF/bin/airflow" db migrate >/dev/null
status=0
"$AF/bin/python" -m pytest -q provider/tests "$@" || status=$?
rm -rf "$HOME_DIR"
exit $status
