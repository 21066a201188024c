#!/usr/bin/env python3
"""Small objects between the two local servers over a link with a round trip: barge's `--files`.

Run through bench/latency.sh. Each server gets a `faultproxy delay RTT` in front (every byte
RTT/2 late each way), the tools are pointed at the proxies, and each setting copies the same
objects from server a to server b once per round, settings alternating. The destination keeps a
reference copy of the data (as bench.py's BENCH_DEST=warm), each run's copy is deleted after it.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
BARGE = str(ROOT / "target" / "release" / "barge")
PROXY = str(ROOT / "target" / "release" / "faultproxy")
E = os.environ
RTTS = [int(x) for x in E.get("LAT_RTTS", "0,10,30").split(",")]
COUNT = int(E.get("LAT_COUNT", "2000"))
SIZE = 64 * 1024
ROUNDS = int(E.get("LAT_ROUNDS", "2"))
FILES = [int(x) for x in E.get("LAT_FILES", "16,32,64,128,256").split(",")]
SETTINGS = [("barge", f) for f in FILES] + [("rclone", 16), ("rclone", 64)]
WORK = Path(tempfile.mkdtemp(prefix="barge-latency-"))


def endpoint(w):
    return E[f"BARGE_TEST_{w}_ENDPOINT"]


def client(w):
    return boto3.client(
        "s3", endpoint_url=endpoint(w), region_name="us-east-1",
        aws_access_key_id=E[f"BARGE_TEST_{w}_KEY_ID"], aws_secret_access_key=E[f"BARGE_TEST_{w}_SECRET"],
        config=Config(max_pool_connections=32, s3={"addressing_style": "path"}))


def delete_prefix(w, bucket, prefix):
    c = client(w)
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for i in range(0, len(objs), 1000):
            c.delete_objects(Bucket=bucket, Delete={"Objects": objs[i : i + 1000]})


def tool_env(eps, tag):
    """barge's config and rclone's remotes for the endpoints `eps` ({"A": url, "B": url})."""
    env = dict(os.environ)
    cfg = ""
    for name, w in (("a", "A"), ("b", "B")):
        cfg += (f'[connections.{name}]\nendpoint = "{eps[w]}"\nregion = "us-east-1"\n'
                f'access_key_id_env = "BARGE_TEST_{w}_KEY_ID"\nsecret_access_key_env = "BARGE_TEST_{w}_SECRET"\n\n')
        r = f"RCLONE_CONFIG_{w}_"
        env.update({r + "TYPE": "s3", r + "PROVIDER": "Other", r + "ENDPOINT": eps[w], r + "REGION": "us-east-1",
                    r + "ACCESS_KEY_ID": E[f"BARGE_TEST_{w}_KEY_ID"], r + "SECRET_ACCESS_KEY": E[f"BARGE_TEST_{w}_SECRET"],
                    r + "FORCE_PATH_STYLE": "true"})
    (WORK / f"barge-{tag}.toml").write_text(cfg)
    env["BARGE_CONFIG"] = str(WORK / f"barge-{tag}.toml")
    env["BARGE_JOURNAL"] = str(WORK / "journal.sqlite")
    env.pop("AWS_CA_BUNDLE", None)  # rclone fails on S3 when it is set
    return env


def server_cpu():
    total = 0.0
    for name in ("a", "b"):
        pid = (ROOT / ".testbed" / name / "pid").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wait_for_quiet_servers():
    for _ in range(60):
        before = server_cpu()
        time.sleep(1)
        if server_cpu() - before < 0.05:
            return


def command(tool, n):
    if tool == "barge":
        return [BARGE, "cp", "-r", "a:src/latency/small/", "b:dst/latency/run/", "--quiet", "--files", str(n)]
    return ["rclone", "--transfers", str(n), "--checkers", str(n), "-q", "copy",
            "A:src/latency/small", "B:dst/latency/run"]


def timed(argv, env):
    out = WORK / "time.txt"
    t0 = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%U %S", "-o", str(out), *argv], env=env,
                       capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"latency: {' '.join(argv)} failed: {p.stderr.strip()[-400:]}")
    u, s = out.read_text().strip().splitlines()[-1].split()
    return wall, float(u) + float(s)


def main():
    direct = tool_env({"A": endpoint("A"), "B": endpoint("B")}, "direct")
    print(f"latency: preparing {COUNT} objects of {SIZE // 1024} KiB", file=sys.stderr)
    delete_prefix("A", "src", "latency/")
    delete_prefix("B", "dst", "latency/")
    d = WORK / "small"
    d.mkdir()
    blob = os.urandom(SIZE * 16)
    for i in range(COUNT):
        off = (i * 4099) % (len(blob) - SIZE)
        (d / f"f{i:05d}").write_bytes(blob[off : off + SIZE])
    subprocess.run([BARGE, "cp", "-r", str(d), "a:src/latency/small/", "--quiet"], env=direct, check=True)
    subprocess.run([BARGE, "cp", "-r", "a:src/latency/small/", "b:dst/latency/ref/", "--quiet"], env=direct,
                   check=True)
    results = {}
    for rtt in RTTS:
        proxies = []
        if rtt == 0:
            env = direct
        else:
            eps = {}
            for w in ("A", "B"):
                p = subprocess.Popen([PROXY, "delay", str(rtt), endpoint(w).split("//", 1)[1]],
                                     stdout=subprocess.PIPE, text=True)
                eps[w] = "http://" + (p.stdout.readline().strip() if p.stdout else "")
                proxies.append(p)
            env = tool_env(eps, f"rtt{rtt}")
        try:
            for r in range(ROUNDS):
                k = r % len(SETTINGS)
                for tool, n in SETTINGS[k:] + SETTINGS[:k]:
                    wait_for_quiet_servers()
                    wall, cpu = timed(command(tool, n), env)
                    delete_prefix("B", "dst", "latency/run/")
                    results.setdefault((rtt, tool, n), []).append((wall, cpu))
                    print(f"latency: rtt {rtt} ms, {tool} {n}: {wall:.2f} s, {cpu:.2f} CPU-s", file=sys.stderr)
        finally:
            for p in proxies:
                p.terminate()
    delete_prefix("A", "src", "latency/")
    delete_prefix("B", "dst", "latency/")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Latency sweep on {time.strftime('%Y-%m-%d')}, commit {commit}: {COUNT} objects of {SIZE // 1024} KiB from "
        f"server a to server b, each behind a `faultproxy delay` adding the round trip; {ROUNDS} round(s), "
        "median (min-max) seconds. barge: `--files N` (parts' `--concurrency` at its default); "
        "rclone: `--transfers N --checkers N`.",
        "",
        "| round trip | tool | N | seconds | objects/s | client CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for (rtt, tool, n), runs in results.items():
        walls = [w for w, _ in runs]
        med = statistics.median(walls)
        cpu = statistics.median(c for _, c in runs)
        lines.append(f"| {rtt} ms | {tool} | {n} | {med:.2f} ({min(walls):.2f}-{max(walls):.2f}) | "
                     f"{COUNT / med:.0f} | {cpu:.2f} |")
    out = ROOT / "bench" / "results" / "latency.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
