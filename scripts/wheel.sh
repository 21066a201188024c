#!/usr/bin/env bash
# Build the `pip install`-able wheel (maturin, the binary packed as the wheel's script, as ruff and
# uv ship), then install it into a fresh virtualenv and run it: the check that a machine with
# Python and no Rust gets a working `barge` on its PATH. Writes dist/*.whl.
# WHEEL_ARGS adds maturin flags (e.g. --target aarch64-unknown-linux-gnu --zig, where that Rust
# target is installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="${BARGE_CACHE:-$HOME/.cache/barge}/maturin"
if [[ ! -x "$TOOLS/bin/maturin" ]]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "maturin>=1.7,<2"
fi
rm -rf dist
# shellcheck disable=SC2086
"$TOOLS/bin/maturin" build --release --locked --out dist ${WHEEL_ARGS:-} >&2
WHEEL="$(ls dist/*.whl)"
echo "built $WHEEL ($(du -h "$WHEEL" | cut -f1))" >&2
# A clean environment with no Rust on its PATH.
VENV="$(mktemp -d /tmp/barge-wheel.XXXXXX)"
trap 'rm -rf "$VENV"' EXIT
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "$WHEEL"
env -i PATH="$VENV/bin:/usr/bin:/bin" HOME="$VENV" barge --version
env -i PATH="$VENV/bin:/usr/bin:/bin" HOME="$VENV" barge cp --help >/dev/null
echo "$WHEEL installs and runs" >&2
