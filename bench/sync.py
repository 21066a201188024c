#!/usr/bin/env python3
"""`barge sync` beside `rclone sync --checksum` and `aws s3 sync`, on the same data and servers.

Run through bench/sync.sh. SYNC_COUNT objects of SYNC_SIZE bytes (default 5,000 x 64 KiB).
Two cases, each tool to its own destination prefix, tools alternating, SYNC_ROUNDS rounds:
- between the two endpoints (server a to server b; the AWS CLI cannot copy between two
  endpoints, so it sits this one out);
- a local folder to server b (the nightly mirror).
Each round: every tool's first sync (everything copied), then 1% of the source rewritten at the
same size with other bytes, then every tool's second sync (timed: the figure that matters). After
each second sync the destination is checked object by object against the source (ETags, which
are the MD5s of these single-part objects): a tool that skipped a change would fail here.
Writes bench/results/sync.md.
"""
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402  (setup_configs, run_timed, s3, delete_prefix)

COUNT = int(os.environ.get("SYNC_COUNT", "5000"))
SIZE = int(os.environ.get("SYNC_SIZE", str(64 * 1024)))
ROUNDS = int(os.environ.get("SYNC_ROUNDS", "3"))
CHANGED = max(1, COUNT // 100)
CONC = B.CONC


def tools(case, d):
    rc = ["rclone", "sync", "--checksum", "--transfers", str(CONC), "--checkers", str(CONC), "-q"]
    bs = [B.BARGE, "sync", "--quiet", "--concurrency", str(CONC), "--files", str(CONC)]
    if case == "between":
        return {
            "barge": bs + ["a:src/sync/", f"b:dst/{d}/"],
            "rclone": rc + ["A:src/sync", f"B:dst/{d}"],
        }
    local = str(B.WORK / "tree")
    return {
        "barge": bs + [local + "/", f"b:dst/{d}/"],
        "rclone": rc + [local, f"B:dst/{d}"],
        "aws cli": ["aws", "--profile", "b", "s3", "sync", "--only-show-errors", local, f"s3://dst/{d}/"],
    }


def etags(profile, bucket, prefix):
    c = B.s3(profile)
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix):]] = o["ETag"]
    return out


def main():
    B.ENV = B.setup_configs()
    for k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        os.environ[k] = B.ENV[k]
    tree = B.WORK / "tree"
    rng = random.Random(7)
    names = [f"d{i % 50:02d}/obj{i:05d}.bin" for i in range(COUNT)]
    for n in names:
        p = tree / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(SIZE))
    B.delete_prefix("a", "src", "sync/")
    subprocess.run([B.BARGE, "cp", "-r", "-q", str(tree) + "/", "a:src/sync/"], env=B.ENV, check=True)
    a = B.s3("a")
    results = {}
    for rnd in range(ROUNDS):
        for case in ("between", "local"):
            order = sorted(tools(case, "x"))
            k = rnd % len(order)
            order = order[k:] + order[:k]
            dests = {t: f"sync/{case}/{t.split()[0]}-{rnd}" for t in order}
            for t in order:
                B.delete_prefix("b", "dst", dests[t] + "/")
                ok, wall, cpu, rss, err, srv = B.run_timed(tools(case, dests[t])[t])
                results.setdefault((case, "first", t), []).append((ok, wall, cpu, rss, err))
                print(f"sync: round {rnd + 1} {case} first {t}: {wall:.2f}s cpu {cpu:.2f}s {err}", file=sys.stderr)
            # 1% rewritten at the same size, after a pause so that times differ too.
            time.sleep(1.5)
            for n in rng.sample(names, CHANGED):
                body = rng.randbytes(SIZE)
                if case == "between":
                    a.put_object(Bucket="src", Key=f"sync/{n}", Body=body)
                else:
                    (tree / n).write_bytes(body)
            want = etags("a", "src", "sync/") if case == "between" else None
            for t in order:
                ok, wall, cpu, rss, err, srv = B.run_timed(tools(case, dests[t])[t])
                got = etags("b", "dst", dests[t] + "/")
                if want is None:
                    # The local tree's MD5s, as the single-part ETags are.
                    want = {n: '"%s"' % hashlib.md5((tree / n).read_bytes()).hexdigest() for n in names}
                wrong = sum(1 for n in names if got.get(n) != want.get(n))
                if wrong:
                    ok, err = False, f"{wrong} objects differ from the source after the sync"
                results.setdefault((case, "changed", t), []).append((ok, wall, cpu, rss, err))
                print(f"sync: round {rnd + 1} {case} 1% changed {t}: {wall:.2f}s cpu {cpu:.2f}s {err}", file=sys.stderr)
            for t in order:
                B.delete_prefix("b", "dst", dests[t] + "/")
            B.wait_for_quiet_servers()
    report(results)


def report(results):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# barge sync beside rclone sync --checksum and aws s3 sync",
        "",
        f"{time.strftime('%Y-%m-%d')}, commit {commit}, {os.cpu_count()} cores, {COUNT} objects x "
        f"{SIZE // 1024} KiB, {CHANGED} ({CHANGED * 100 // COUNT}%) rewritten at the same size between the "
        f"first and the second sync, {CONC} transfers/checkers for every tool, Garage on loopback, "
        f"{ROUNDS} rounds, medians (min-max). Every second sync checked object by object against the "
        "source afterwards.",
        "",
        "| case | sync | tool | wall s | client CPU s | peak RSS MiB | ok |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for (case, which, t), runs in sorted(results.items()):
        walls = [r[1] for r in runs]
        cpus = [r[2] for r in runs]
        rss = [r[3] for r in runs]
        ok = all(r[0] for r in runs)
        errs = "; ".join(sorted({r[4] for r in runs if r[4]}))
        lines.append(
            f"| {case} | {which} | {t} | {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) "
            f"| {statistics.median(cpus):.2f} | {statistics.median(rss):.0f} | {'yes' if ok else 'NO: ' + errs} |"
        )
    out = B.ROOT / "bench" / "results" / "sync.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
