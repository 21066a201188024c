#!/usr/bin/env bash
# Flamegraphs of barge on the benchmark's paths, against the local Garage servers:
#   bench/profile.sh            writes bench/results/flame-{ab,small,up,down}.svg (git-ignored)
# Needs perf (Debian's linux-perf; installed if missing) and inferno (built once into the cache
# folder). Sizes: PROFILE_BIG (default 1GiB), PROFILE_SMALL_COUNT (2000). perf samples CPU time
# (cpu-clock), so it works on VMs without hardware counters.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
BIG="${PROFILE_BIG:-1GiB}"
COUNT="${PROFILE_SMALL_COUNT:-2000}"

command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
INF="$CACHE/inferno/bin"
[[ -x "$INF/inferno-flamegraph" ]] || cargo install inferno --locked --root "$CACHE/inferno"

cargo build --release --locked -p barge-cli
scripts/testbed.sh start
WORK="$(mktemp -d /tmp/barge-profile.XXXXXX)"
trap 'scripts/testbed.sh stop; rm -rf "$WORK"' EXIT
# shellcheck disable=SC1091
source .testbed/env
scripts/testbed.sh barge-config >"$WORK/barge.toml"
export BARGE_CONFIG="$WORK/barge.toml" BARGE_JOURNAL="$WORK/journal.sqlite"
B=target/release/barge

bytes="$(python3 -c "import sys; v=sys.argv[1]; u={'KiB':1<<10,'MiB':1<<20,'GiB':1<<30}; print(next((int(float(v[:-3])*m) for k,m in u.items() if v.endswith(k)), v))" "$BIG")"
head -c "$bytes" /dev/urandom >"$WORK/big.bin"
mkdir "$WORK/small"
python3 - "$WORK/small" "$COUNT" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
blob = os.urandom(64 * 1024 * 16)
for i in range(n):
    off = (i * 4099) % (len(blob) - 65536)
    open(f"{d}/f{i:05d}", "wb").write(blob[off:off + 65536])
PY
$B cp "$WORK/big.bin" a:src/profile/big --quiet
$B cp -r "$WORK/small" a:src/profile/small/ --quiet

mkdir -p bench/results
flame() {
  local name="$1"; shift
  perf record -q -F 999 -g -o "$WORK/$name.data" -- "$@" >/dev/null
  perf script -i "$WORK/$name.data" 2>/dev/null | "$INF/inferno-collapse-perf" \
    | "$INF/inferno-flamegraph" --title "barge: $name" >"bench/results/flame-$name.svg"
  echo "profile: bench/results/flame-$name.svg" >&2
}
flame ab $B cp a:src/profile/big b:dst/profile/big --quiet
flame small $B cp -r a:src/profile/small/ b:dst/profile/small/ --quiet
flame up $B cp "$WORK/big.bin" b:dst/profile/up --quiet
flame down $B cp a:src/profile/big "$WORK/down.bin" --quiet
