#!/usr/bin/env python3
"""Many small objects over a link with a round trip: barge's `--files` beside the peers'.

Run through bench/latency.sh. Each server gets a `faultproxy delay RTT` in front (every byte
RTT/2 late each way), the tools are pointed at the proxies, and each setting moves the same
objects once per round, settings alternating. Scenarios (LAT_SCENARIOS): `between` (server a to
server b, through the client), `within` (a bucket to another on server a: server-side copies),
`upload` (a local folder to server b). Server b keeps a reference copy of the data (as
bench.py's BENCH_DEST=warm); each run's copy is deleted after it.
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
SCENARIOS = E.get("LAT_SCENARIOS", "between,within,upload").split(",")
S5CMD = subprocess.run(["sh", "-c", "command -v s5cmd"], capture_output=True, text=True).stdout.strip()


def settings(scn):
    """(tool, N) to run in a scenario: barge's --files values; rclone at 16 and 64 transfers;
    s5cmd (one endpoint only: not between two servers) at 16 and its default of 256 workers."""
    barge = FILES if scn == "between" else [f for f in FILES if f in (16, 64, 256)] or FILES
    out = [("barge", f) for f in barge] + [("rclone", 16), ("rclone", 64)]
    if scn != "between" and S5CMD:
        out += [("s5cmd", 16), ("s5cmd", 256)]
    return out

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


# Where each scenario reads and writes: (barge src, barge dst, rclone src, rclone dst, s5cmd
# src, s5cmd dst, server s5cmd talks to); the destination prefix is deleted after each run.
def places(scn):
    local = str(WORK / "small")
    return {
        "between": ("a:src/latency/small/", "b:dst/latency/run/", "A:src/latency/small", "B:dst/latency/run",
                    None, None, None),
        "within": ("a:src/latency/small/", "a:dst/latency/run/", "A:src/latency/small", "A:dst/latency/run",
                   "s3://src/latency/small/*", "s3://dst/latency/run/", "A"),
        "upload": (local + "/", "b:dst/latency/run/", local, "B:dst/latency/run",
                   local + "/*", "s3://dst/latency/run/", "B"),
    }[scn]


def dest_server(scn):
    return "A" if scn == "within" else "B"


def command(scn, tool, n, eps):
    bs, bd, rs, rd, ss, sd, sw = places(scn)
    if tool == "barge":
        return [BARGE, "cp", "-r", bs, bd, "--quiet", "--files", str(n)]
    if tool == "rclone":
        return ["rclone", "--transfers", str(n), "--checkers", str(n), "-q", "copy", rs, rd]
    return [S5CMD, "--endpoint-url", eps[sw], "--credentials-file", str(WORK / f"s5cmd-{sw}"), "--numworkers",
            str(n), "cp", ss, sd]


def s5cmd_credentials():
    for w in ("A", "B"):
        f = WORK / f"s5cmd-{w}"
        f.write_text(f"[default]\naws_access_key_id = {E[f'BARGE_TEST_{w}_KEY_ID']}\n"
                     f"aws_secret_access_key = {E[f'BARGE_TEST_{w}_SECRET']}\n")
        os.chmod(f, 0o600)


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
    direct["AWS_REGION"] = "us-east-1"
    s5cmd_credentials()
    print(f"latency: preparing {COUNT} objects of {SIZE // 1024} KiB", file=sys.stderr)
    delete_prefix("A", "src", "latency/")
    delete_prefix("B", "dst", "latency/")
    delete_prefix("A", "dst", "latency/")
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
            eps = {"A": endpoint("A"), "B": endpoint("B")}
        else:
            eps = {}
            for w in ("A", "B"):
                p = subprocess.Popen([PROXY, "delay", str(rtt), endpoint(w).split("//", 1)[1]],
                                     stdout=subprocess.PIPE, text=True)
                eps[w] = "http://" + (p.stdout.readline().strip() if p.stdout else "")
                proxies.append(p)
            env = tool_env(eps, f"rtt{rtt}")
            env["AWS_REGION"] = "us-east-1"
        try:
            for scn in SCENARIOS:
                runs = settings(scn)
                for r in range(ROUNDS):
                    k = r % len(runs)
                    for tool, n in runs[k:] + runs[:k]:
                        wait_for_quiet_servers()
                        wall, cpu = timed(command(scn, tool, n, eps), env)
                        delete_prefix(dest_server(scn), "dst", "latency/run/")
                        results.setdefault((scn, rtt, tool, n), []).append((wall, cpu))
                        print(f"latency: {scn}, rtt {rtt} ms, {tool} {n}: {wall:.2f} s, {cpu:.2f} CPU-s",
                              file=sys.stderr)
        finally:
            for p in proxies:
                p.terminate()
    delete_prefix("A", "src", "latency/")
    delete_prefix("A", "dst", "latency/")
    delete_prefix("B", "dst", "latency/")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Latency sweep on {time.strftime('%Y-%m-%d')}, commit {commit}: {COUNT} objects of {SIZE // 1024} KiB, "
        "each server behind a `faultproxy delay` adding the round trip; between = server a to server b, within = "
        "server-side copies on server a, upload = a local folder to server b; "
        f"{ROUNDS} round(s), median (min-max) seconds. barge: `--files N` (parts' `--concurrency` at its "
        "default); rclone: `--transfers N --checkers N`; s5cmd: `--numworkers N` (its default 256).",
        "",
        "| scenario | round trip | tool | N | seconds | objects/s | client CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for (scn, rtt, tool, n), runs in sorted(results.items(), key=lambda kv: (SCENARIOS.index(kv[0][0]), kv[0][1])):
        walls = [w for w, _ in runs]
        med = statistics.median(walls)
        cpu = statistics.median(c for _, c in runs)
        lines.append(f"| {scn} | {rtt} ms | {tool} | {n} | {med:.2f} ({min(walls):.2f}-{max(walls):.2f}) | "
                     f"{COUNT / med:.0f} | {cpu:.2f} |")
    out = ROOT / "bench" / "results" / "latency.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
