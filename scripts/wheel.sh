#!/usr/bin/env bash
# Build the `pip install`-able wheel (maturin, the binary packed as the wheel's script, as ruff and
# uv ship), then check it: installed into a fresh virtualenv and run, with nothing but the venv on
# the PATH, for the machine's own architecture; for another (WHEEL_TARGET=aarch64-unknown-linux-gnu,
# cross-built with zig), its binary run under qemu-user. Writes dist/*.whl.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="${BARGE_CACHE:-$HOME/.cache/barge}/maturin"
if [[ ! -x "$TOOLS/bin/maturin" ]]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "maturin>=1.7,<2" ziglang
fi
TARGET="${WHEEL_TARGET:-}"
# zig links against an old glibc (manylinux2014: glibc 2.17, any Linux of the last decade) and
# cross-compiles the C parts (aws-lc) for another target.
ARGS=(build --release --locked --out dist --zig --compatibility manylinux2014)
if [[ -n "$TARGET" ]]; then
  rustup target add "$TARGET" >&2
  ARGS+=(--target "$TARGET")
fi
rm -rf dist
PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/maturin" "${ARGS[@]}" >&2
WHEEL="$(ls dist/*.whl)"
echo "built $WHEEL ($(du -h "$WHEEL" | cut -f1))" >&2
CHECK="$(mktemp -d /tmp/barge-wheel.XXXXXX)"
trap 'rm -rf "$CHECK"' EXIT
if [[ -z "$TARGET" ]]; then
  python3 -m venv "$CHECK/venv"
  "$CHECK/venv/bin/pip" install -q "$WHEEL"
  env -i PATH="$CHECK/venv/bin:/usr/bin:/bin" HOME="$CHECK" barge --version
  env -i PATH="$CHECK/venv/bin:/usr/bin:/bin" HOME="$CHECK" barge cp --help >/dev/null
else
  # Debian's qemu-user and the target's C library (qemu-user, libc6-arm64-cross).
  arch="${TARGET%%-*}"
  python3 -m zipfile -e "$WHEEL" "$CHECK/w"
  bin="$(find "$CHECK/w" -path '*scripts/barge')"
  chmod +x "$bin"
  "qemu-$arch" -L "/usr/$arch-linux-gnu" "$bin" --version
  "qemu-$arch" -L "/usr/$arch-linux-gnu" "$bin" cp --help >/dev/null
fi
echo "$WHEEL installs and runs" >&2
