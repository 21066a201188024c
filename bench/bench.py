#!/usr/bin/env python3
"""barge beside its peers, on the same data, the same local S3 servers, in the same run.

Run through bench/run.sh, which installs the peers, starts the two Garage servers and builds
barge. Each scenario runs every tool once per round, the order rotating between rounds; the
table reports the median and the spread (min-max) of wall time, throughput, client CPU seconds
(user+sys) per GiB moved and client peak RSS, measured by GNU time around each command; the two
Garage servers' CPU seconds per GiB (from /proc) and how busy the machine's cores were (client and
servers' CPU over cores x wall time): near 100% means the run was bound by this machine's CPU.
Scenario 4's upload runs twice: from the file as the run left it (in the page cache), and from
the same file dropped from the page cache before each tool's run (a large file written long ago).

Environment: BENCH_BIG (scenarios 1, 4, 5; default 4GiB), BENCH_HUGE (scenario 2; 6GiB),
BENCH_SMALL_COUNT (scenario 3; 5000), BENCH_ROUNDS (3), BENCH_SHORT_ROUNDS (rounds of the short
scenarios 3 and 4 download; 5 if BENCH_ROUNDS is 3 or more, else BENCH_ROUNDS), BENCH_SCENARIOS (e.g. "1,2"),
BENCH_CONCURRENCY (16 for every tool), BENCH_AIRFLOW_PYTHON (set by run.sh: the real Airflow DAG
joins scenario 1), BENCH_AIRFLOW_ROUNDS (1: it is slow), BENCH_DEST (warm or empty: what the
destination server holds when a run starts; see DEST below), BENCH_TOOLS (e.g. "barge": only the
tools whose names start so), BENCH_BARGE_BASELINE (another barge binary, e.g. one built from the
commit before a change: every barge run gets a twin "... [baseline]" in the same rounds, and the
ratios say how the two compare round by round). A run narrowed by BENCH_TOOLS, BENCH_BARGE_BASELINE
or BENCH_SCENARIOS writes bench/results/partial.{md,json,png} (not committed), so it cannot
replace the last full run's latest.* by mistake.

Scenario 6 is the shortest copy there is: one 64 KiB object between the endpoints, the whole
command timed (start-up, journal, stat, copy, verify): what a user waits for before the first
byte has moved and landed.
"""
import json
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
MIB = 1024 * 1024
GIB = 1024 * MIB


def size_env(name, default):
    v = os.environ.get(name, default)
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for u, m in units.items():
        if v.endswith(u):
            return int(float(v[: -len(u)]) * m)
    return int(v)


BIG = size_env("BENCH_BIG", "4GiB")
HUGE = size_env("BENCH_HUGE", "6GiB")
SMALL_COUNT = int(os.environ.get("BENCH_SMALL_COUNT", "5000"))
SMALL_SIZE = 64 * 1024
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# Scenarios 3 and 4's download take a few seconds a run, and on a 2-core VM shared with both
# servers a run's time moves by up to a third from one minute to the next, with the servers'
# and the client's CPU seconds for the same work (not the client's doing: every tool's runs
# move together). Their medians get more rounds, which cost about a minute each.
SHORT_ROUNDS = int(os.environ.get("BENCH_SHORT_ROUNDS", str(max(ROUNDS, 5) if ROUNDS >= 3 else ROUNDS)))
SHORT = {"3", "4d", "6"}
TOOLS = [t.strip() for t in os.environ.get("BENCH_TOOLS", "").split(",") if t.strip()]
BASELINE = os.environ.get("BENCH_BARGE_BASELINE", "")
CONC = int(os.environ.get("BENCH_CONCURRENCY", "16"))
# The real Airflow DAG runs in scenario 1 when bench/run.sh has installed Airflow (its python).
AIRFLOW_PYTHON = os.environ.get("BENCH_AIRFLOW_PYTHON", "")
# It moves about 1 chunk task per second on 2 cores: 4 GiB takes over 10 minutes a round.
AIRFLOW_ROUNDS = int(os.environ.get("BENCH_AIRFLOW_ROUNDS", "1"))
SCENARIOS = [s.strip() for s in os.environ.get("BENCH_SCENARIOS", "1,2,3,4,5").split(",")]
# What server b (the destination of scenarios 1, 3, 4 up and 5) holds when a run starts. Garage
# never rewrites a block it already holds, and frees the blocks of deleted objects only ten
# minutes after the delete. Deleting each run's objects, as this bench did up to 9db9022, left
# it to the rotation and the clock whether a run found its blocks there (the server then skips
# writing them) or wrote them all, and whether it paid for freeing an earlier run's.
#   warm  (default) b keeps a reference copy of every scenario's data for the whole bench: every
#         run finds its blocks there, the server writes no object data, nothing is ever freed.
#         The server's share of this one machine's 2 cores is the smallest, as it is in real use,
#         where the server does not share the client's cores. Scenario 3's runs each meet b
#         restarted with only the small objects' reference copy (see fresh_b_for_small).
#   empty b is restarted empty before every run that writes to it: every run writes all its
#         blocks (on this VM's slow buffered writes, about 5 more server CPU s per GiB).
DEST = os.environ.get("BENCH_DEST", "warm")
if DEST not in ("warm", "empty"):
    sys.exit(f"BENCH_DEST={DEST!r}: use warm or empty")

E = {k: os.environ[k] for k in os.environ if k.startswith("BARGE_TEST_")}
WORK = Path(tempfile.mkdtemp(prefix="barge-bench-"))
# Where scenario 4's downloads land (BENCH_DOWN_DIR, e.g. /dev/shm for tmpfs): the folder's
# file system shows in the table's note.
DOWN_DIR = Path(os.environ.get("BENCH_DOWN_DIR") or WORK)
# Kernel CPU seconds of each run, by (scenario, tool), beside the user+kernel total.
KERNEL = {}
LAST_KERNEL = [float("nan")]
NCPU = os.cpu_count() or 1
# BENCH_PIN="SERVERS/CLIENT" (CPU lists as taskset takes them, e.g. "0-7/8-15"): the two Garage
# servers pinned to the first cores and every tool's command to the second, so that the client's
# own CPU shows apart from the servers'. Unset: no pinning.
PIN = os.environ.get("BENCH_PIN", "")
PIN_SERVERS, _, PIN_CLIENT = PIN.partition("/")


def pin_servers():
    """Pin the running Garage servers (every thread) to BENCH_PIN's server cores."""
    if not PIN_SERVERS:
        return
    for name in ("a", "b"):
        pid = (ROOT / ".testbed" / name / "pid").read_text().strip()
        subprocess.run(["taskset", "-a", "-c", "-p", PIN_SERVERS, pid], check=True,
                       stdout=subprocess.DEVNULL)


def setup_configs():
    """One set of connection settings, written for every tool."""
    barge = ""
    aws_cfg = ""
    aws_cred = ""
    rclone_env = {}
    for name, w in (("a", "A"), ("b", "B")):
        ep, kid, sec = E[f"BARGE_TEST_{w}_ENDPOINT"], E[f"BARGE_TEST_{w}_KEY_ID"], E[f"BARGE_TEST_{w}_SECRET"]
        barge += (
            f'[connections.{name}]\nendpoint = "{ep}"\nregion = "us-east-1"\n'
            f'access_key_id_env = "BARGE_TEST_{w}_KEY_ID"\nsecret_access_key_env = "BARGE_TEST_{w}_SECRET"\n\n'
        )
        aws_cfg += (
            f"[profile {name}]\nregion = us-east-1\nendpoint_url = {ep}\n"
            f"s3 =\n  addressing_style = path\n  max_concurrent_requests = {CONC}\n"
            f"  multipart_chunksize = 16MB\n  multipart_threshold = 16MB\n\n"
        )
        aws_cred += f"[{name}]\naws_access_key_id = {kid}\naws_secret_access_key = {sec}\n\n"
        R = f"RCLONE_CONFIG_{w}_"
        rclone_env.update({
            R + "TYPE": "s3", R + "PROVIDER": "Other", R + "ENDPOINT": ep,
            R + "ACCESS_KEY_ID": kid, R + "SECRET_ACCESS_KEY": sec, R + "REGION": "us-east-1",
            R + "FORCE_PATH_STYLE": "true",
        })
    (WORK / "barge.toml").write_text(barge)
    (WORK / "aws_config").write_text(aws_cfg)
    (WORK / "aws_credentials").write_text(aws_cred)
    os.chmod(WORK / "aws_credentials", 0o600)
    env = dict(os.environ)
    env.update(rclone_env)
    env["AWS_CONFIG_FILE"] = str(WORK / "aws_config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(WORK / "aws_credentials")
    env["BARGE_CONFIG"] = str(WORK / "barge.toml")
    env["BARGE_JOURNAL"] = str(WORK / "journal.sqlite")
    env.pop("AWS_CA_BUNDLE", None)  # rclone fails on S3 when it is set
    for k in [k for k in env if k.startswith("AWS_") and k not in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")]:
        env.pop(k)
    return env


ENV = None


def s3(profile):
    s = boto3.session.Session(profile_name=profile)
    return s.client("s3", config=Config(max_pool_connections=32, s3={"addressing_style": "path"}))


def delete_prefix(profile, bucket, prefix):
    c = s3(profile)
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for i in range(0, len(objs), 1000):
            c.delete_objects(Bucket=bucket, Delete={"Objects": objs[i : i + 1000]})
    for u in c.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
        c.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])


def server_cpu():
    """CPU seconds (user+sys) the two Garage servers have used so far."""
    total = 0.0
    for name in ("a", "b"):
        try:
            pid = (ROOT / ".testbed" / name / "pid").read_text().strip()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")
    return total


def wait_for_quiet_servers(limit_s=60):
    """Wait until the servers use under 5% of a core (their background work after deletions)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = server_cpu()
        time.sleep(1)
        if not server_cpu() - before > 0.05:  # also stops on NaN (no /proc)
            return


def run_timed(argv, shell=False):
    """Run a command under GNU time: (ok, wall s, cpu s, peak RSS MiB, error text, server cpu s).

    A command that prints "moved in SECONDS" as its last line (the real Airflow DAG, whose
    scheduler start is not part of a transfer) has that taken as its wall time."""
    out = WORK / "time.txt"
    cmd = ["taskset", "-c", PIN_CLIENT] if PIN_CLIENT else []
    cmd += ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(out)]
    cmd += ["bash", "-c", argv] if shell else argv
    srv0 = server_cpu()
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    wall = time.monotonic() - t0
    srv = server_cpu() - srv0
    last = (p.stdout.strip().splitlines() or [""])[-1]
    if p.returncode == 0 and last.startswith("moved in "):
        wall = float(last.split()[-1])
    try:
        e, u, s, m = out.read_text().strip().splitlines()[-1].split()
        cpu, rss = float(u) + float(s), int(m) / 1024
        LAST_KERNEL[0] = float(s)
    except Exception:  # noqa: BLE001 - a failed command may leave no timing
        cpu, rss = float("nan"), float("nan")
    err = "" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1][:160]
    return p.returncode == 0, wall, cpu, rss, err, srv


def evict(path):
    """Drop a file's pages from the page cache (written back and clean first), as for a large
    file that was written long ago: the upload then reads it from the disk."""
    subprocess.run(["sync"], check=False)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def py(script, *args):
    return [sys.executable, str(ROOT / "bench" / script), *args]


def S5(profile):
    """s5cmd's flags for one server: its endpoint and the credentials profile."""
    w = profile.upper()
    return ["--endpoint-url", E[f"BARGE_TEST_{w}_ENDPOINT"], "--credentials-file",
            str(WORK / "aws_credentials"), "--profile", profile]


def tools_for(scn):
    """tools_for_all, less the tools BENCH_TOOLS leaves out, plus the baseline's twins."""
    tools = {n: f for n, f in tools_for_all(scn).items() if not TOOLS or any(n.startswith(t) for t in TOOLS)}
    if BASELINE:
        def twin(f):
            def g(d):
                argv, shell = f(d + "-baseline")
                return [BASELINE, *argv[1:]], shell
            return g
        tools.update({f"{n} [baseline]": twin(f) for n, f in list(tools.items())
                      if n.startswith("barge") and f is not None})
    return tools


def tools_for_all(scn):
    """(tool name, argv or shell string, is_shell) per scenario; None where the tool cannot."""
    # barge's --files (small files at a time) too: every tool gets CONC-way concurrency.
    opts = ["--quiet", "--concurrency", str(CONC), "--files", str(CONC)]

    def bc(*args):
        return [BARGE, *args, *opts]

    rc = ["rclone", "--s3-upload-concurrency", str(CONC), "--s3-chunk-size", "16M",
          "--transfers", str(CONC), "--checkers", str(CONC), "-q"]
    if scn == "1":
        return {
            "barge": lambda d: (bc("cp", "a:src/bench/big", f"b:dst/{d}/big"), False),
            "rclone": lambda d: (rc + ["copyto", "A:src/bench/big", f"B:dst/{d}/big"], False),
            "aws cli (pipe)": lambda d: (
                f"aws --profile a s3 cp s3://src/bench/big - | aws --profile b s3 cp - s3://dst/{d}/big --expected-size {BIG}",
                True),
            "boto3": lambda d: (py("boto3_transfer.py", "copy", "a", "src", "bench/big", "b", "dst", f"{d}/big"), False),
            "airflow pattern": lambda d: (py("airflow_replay.py", "a", "src", "bench/big", "b", "dst", f"{d}/big"), False),
            "s5cmd": None,
            **({"airflow DAG (real)": lambda d: (
                [AIRFLOW_PYTHON, str(ROOT / "bench" / "airflow_dag.py"), "run", str(WORK / "airflow"),
                 "a", "src", "bench/big", "b", "dst", f"{d}/big"], False)} if AIRFLOW_PYTHON else {}),
        }
    if scn == "2":
        return {
            "barge": lambda d: (bc("cp", "a:src/bench/huge", f"a:dst/{d}/huge"), False),
            "rclone": lambda d: (rc + ["copyto", "A:src/bench/huge", f"A:dst/{d}/huge"], False),
            "aws cli": lambda d: (["aws", "--profile", "a", "s3", "cp", "s3://src/bench/huge", f"s3://dst/{d}/huge"], False),
            "s5cmd": lambda d: (["s5cmd", *S5("a"), "--numworkers", str(CONC),
                                 "cp", "s3://src/bench/huge", f"s3://dst/{d}/huge"], False),
            "boto3": lambda d: (py("boto3_transfer.py", "copy", "a", "src", "bench/huge", "a", "dst", f"{d}/huge"), False),
            "airflow pattern": lambda d: (py("airflow_replay.py", "a", "src", "bench/huge", "a", "dst", f"{d}/huge"), False),
        }
    if scn == "3":
        return {
            "barge": lambda d: (bc("cp", "-r", "a:src/bench/small/", f"b:dst/{d}/small/"), False),
            "rclone": lambda d: (rc + ["copy", "A:src/bench/small", f"B:dst/{d}/small"], False),
            "boto3": lambda d: (py("boto3_transfer.py", "copytree", "a", "src", "bench/small/", "b", "dst", f"{d}/small/"), False),
            "airflow pattern": lambda d: (py("airflow_replay.py", "a", "src", "bench/small/", "b", "dst", f"{d}/small/", "--prefix"), False),
            "aws cli": None,
            "s5cmd": None,
        }
    local = str(WORK / "big.bin")
    down = str(DOWN_DIR / "down.bin")
    if scn in ("4u", "4c"):
        return {
            "barge": lambda d: (bc("cp", local, f"b:dst/{d}/big"), False),
            "rclone": lambda d: (rc + ["copyto", local, f"B:dst/{d}/big"], False),
            "aws cli": lambda d: (["aws", "--profile", "b", "s3", "cp", local, f"s3://dst/{d}/big"], False),
            "s5cmd": lambda d: (["s5cmd", *S5("b"), "cp", "--concurrency", str(CONC),
                                 "--part-size", "16", local, f"s3://dst/{d}/big"], False),
            "boto3": lambda d: (py("boto3_transfer.py", "upload", "b", local, "dst", f"{d}/big"), False),
        }
    if scn == "4d":
        return {
            "barge": lambda d: (bc("cp", "a:src/bench/big", down), False),
            "rclone": lambda d: (rc + ["copyto", "A:src/bench/big", down], False),
            "aws cli": lambda d: (["aws", "--profile", "a", "s3", "cp", "s3://src/bench/big", down], False),
            "s5cmd": lambda d: (["s5cmd", *S5("a"), "cp", "--concurrency", str(CONC),
                                 "--part-size", "16", "s3://src/bench/big", down], False),
            "boto3": lambda d: (py("boto3_transfer.py", "download", "a", "src", "bench/big", down), False),
            # barge reports a download done once the file is on disk (fsync); the peers return
            # with it in the page cache. The fastest of them, timed until its file is durable too:
            "s5cmd + sync FILE": lambda d: (
                f"s5cmd {' '.join(S5('a'))} cp --concurrency {CONC} --part-size 16 s3://src/bench/big {down}"
                f" && sync {down}", True),
        }
    if scn == "6":
        return {
            "barge": lambda d: (bc("cp", "a:src/bench/one", f"b:dst/{d}/one"), False),
            "rclone": lambda d: (rc + ["copyto", "A:src/bench/one", f"B:dst/{d}/one"], False),
        }
    if scn == "5":
        return {
            "barge --max-memory 128MiB": lambda d: (
                bc("cp", "a:src/bench/big", f"b:dst/{d}/big", "--max-memory", "128MiB"), False),
            "barge (default 512MiB)": lambda d: (bc("cp", "a:src/bench/big", f"b:dst/{d}/big"), False),
        }
    raise ValueError(scn)


SCENARIO_TITLE = {
    "1": "1. one object between two endpoints",
    "2": "2. one object within one endpoint",
    "3": "3. many 64 KiB objects between two endpoints",
    "4u": "4. local file to S3",
    "4c": "4. local file to S3, not in the page cache",
    "4d": "4. S3 to local file",
    "5": "5. scenario 1 with a memory budget",
    "6": "6. one 64 KiB object between two endpoints, whole command",
}


def scenario_bytes(scn):
    return {"1": BIG, "2": HUGE, "3": SMALL_COUNT * SMALL_SIZE, "4u": BIG, "4c": BIG, "4d": BIG, "5": BIG, "6": SMALL_SIZE}[scn]


# Scenarios whose runs write to server b.
WRITES_B = {"1", "3", "4u", "4c", "5", "6"}


def scenario_runs():
    """The scenarios asked for, scenario 4 as its three runs (upload cached, uncached, download)."""
    runs = []
    for s in SCENARIOS:
        runs += ["4u", "4c", "4d"] if s == "4" else [s]
    return runs


def reset_b():
    """Restart server b empty (same port, key and bucket) and wait until it is idle."""
    subprocess.run([str(ROOT / "scripts" / "testbed.sh"), "reset", "b"], check=True,
                    stdout=subprocess.DEVNULL)
    subprocess.run(["sync"], check=False)
    wait_for_quiet_servers()


def ceiling():
    """The server's own ceiling for barge's upload path: in-memory parts, no reads.

    Every part is the same bytes, so after the first part server b holds every block it is sent
    and writes none: the same condition as the scenarios' runs with DEST=warm."""
    if DEST == "empty":
        reset_b()
    ok, wall, cpu, rss, err, _ = run_timed([BARGE, "debug", "upload-ceiling", "b:dst/bench/ceiling",
                                         "--size", str(BIG), "--concurrency", str(CONC)])
    delete_prefix("b", "dst", "bench/ceiling")
    return BIG / wall / MIB if ok else None


def download_ceiling():
    """The server's own ceiling for barge's download path: scenario 4's ranged GETs from server
    a, the bytes dropped instead of written (no disk). The median of three reads."""
    rates = []
    for _ in range(3):
        wait_for_quiet_servers()
        ok, wall, cpu, rss, err, _ = run_timed([BARGE, "debug", "download-ceiling", "a:src/bench/big",
                                             "--part-size", "16MiB", "--concurrency", str(CONC)])
        if ok:
            rates.append(BIG / wall / MIB)
    return statistics.median(rates) if rates else None


def prepare():
    print("bench: preparing data", file=sys.stderr)
    delete_prefix("a", "src", "bench/")  # nothing from an earlier run on the same servers
    if AIRFLOW_PYTHON and "1" in SCENARIOS:
        subprocess.run([AIRFLOW_PYTHON, str(ROOT / "bench" / "airflow_dag.py"), "setup", str(WORK / "airflow"),
                        E["BARGE_TEST_PG_URL"]], env=ENV, check=True)
    subprocess.run(["head", "-c", str(BIG), "/dev/urandom"], stdout=open(WORK / "big.bin", "wb"), check=True)
    subprocess.run([BARGE, "cp", str(WORK / "big.bin"), "a:src/bench/big", "--quiet"], env=ENV, check=True)
    if "2" in SCENARIOS:
        subprocess.run(["head", "-c", str(HUGE), "/dev/urandom"], stdout=open(WORK / "huge.bin", "wb"), check=True)
        subprocess.run([BARGE, "cp", str(WORK / "huge.bin"), "a:src/bench/huge", "--quiet"], env=ENV, check=True)
        (WORK / "huge.bin").unlink()
    if "3" in SCENARIOS:
        d = WORK / "small"
        d.mkdir()
        blob = os.urandom(SMALL_SIZE * 16)
        for i in range(SMALL_COUNT):
            off = (i * 4099) % (len(blob) - SMALL_SIZE)
            (d / f"f{i:05d}").write_bytes(blob[off : off + SMALL_SIZE])
        subprocess.run([BARGE, "cp", "-r", str(d), "a:src/bench/small/", "--quiet"], env=ENV, check=True)
    if "6" in SCENARIOS:
        (WORK / "one.bin").write_bytes(os.urandom(SMALL_SIZE))
        subprocess.run([BARGE, "cp", str(WORK / "one.bin"), "a:src/bench/one", "--quiet"], env=ENV, check=True)
    if DEST == "warm":
        # The reference copies go on server b just before the first run that needs them.
        delete_prefix("b", "dst", "bench/")


# What reference copies server b holds now (see DEST).
B_REFS = set()


def seed_b(refs):
    """Put the reference copies `refs` ("big", "small") on server b, made from the same bytes as
    the runs' (every tool cuts its parts at multiples of 1 MiB, Garage's block size, so its
    blocks are these), unless b holds them already."""
    missing = [r for r in refs if r not in B_REFS]
    for ref in missing:
        if ref == "big":
            argv = [BARGE, "cp", "a:src/bench/big", "b:dst/bench/ref/big", "--quiet"]
        else:
            argv = [BARGE, "cp", "-r", "a:src/bench/small/", "b:dst/bench/ref/small/", "--quiet"]
        subprocess.run(argv, env=ENV, check=True)
        B_REFS.add(ref)
    if missing:
        subprocess.run(["sync"], check=False)
        wait_for_quiet_servers()


def fresh_b_for_small():
    """Scenario 3's runs each meet server b restarted empty, then (BENCH_DEST=warm) given only
    the small objects' reference copy: a run of 5,000 PUTs costs b a quarter to a half more CPU
    on a server that earlier runs wrote and deleted those keys on, or 4 GiB objects (by hand,
    2026-11-28), so without this a run's time depended on how much the bench had run before it."""
    reset_b()
    B_REFS.clear()
    if DEST == "warm":
        seed_b(["small"])


def main():
    global ENV
    ENV = setup_configs()
    for k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        os.environ[k] = ENV[k]
    pin_servers()
    prepare()
    scns = scenario_runs()
    results = {}
    for rnd in range(max(ROUNDS, SHORT_ROUNDS if SHORT & set(scns) else 0)):
        for scn in scns:
            if rnd >= (SHORT_ROUNDS if scn in SHORT else ROUNDS):
                continue
            tools = tools_for(scn)
            for name in tools:
                if tools[name] is None:
                    results.setdefault((scn, name), [])
            # The order rotates among the tools that can run, so that each comes first (right
            # after another scenario) and last in turn; rotating a list that also held the
            # tools that cannot run put barge first in two of three rounds of scenario 3 and
            # rclone in none.
            names = sorted(n for n in tools if tools[n] is not None)
            k = rnd % len(names)
            for name in names[k:] + names[:k]:
                f = tools[name]
                if name == "airflow DAG (real)" and rnd >= AIRFLOW_ROUNDS:
                    continue
                dest = f"bench/run/{scn}/{name.split()[0]}"
                argv, shell = f(dest)
                if scn == "3":
                    fresh_b_for_small()
                elif DEST == "empty" and scn in WRITES_B:
                    reset_b()
                elif DEST == "warm" and scn in WRITES_B and scn != "6":
                    seed_b(["big"])
                if scn == "4c":
                    evict(WORK / "big.bin")
                ok, wall, cpu, rss, err, srv = run_timed(argv, shell)
                print(f"bench: round {rnd + 1} scenario {scn} {name}: {'ok' if ok else 'FAILED'} "
                      f"{wall:.3f}s cpu {cpu:.1f}s servers {srv:.1f}s rss {rss:.0f}MiB {err}", file=sys.stderr)
                results.setdefault((scn, name), []).append((ok, wall, cpu, rss, err, srv))
                KERNEL.setdefault((scn, name), []).append(LAST_KERNEL[0] if ok else float("nan"))
                # What a run wrote shares its blocks with a copy that stays (server a: scenario
                # 2's source; server b: the reference copies, see DEST), so deleting it leaves
                # Garage no block to free later, and the next run finds the same blocks there.
                delete_prefix("a", "dst", "bench/run/")
                if DEST == "warm":
                    delete_prefix("b", "dst", "bench/run/")
                (DOWN_DIR / "down.bin").unlink(missing_ok=True)
                # No tool starts with another's dirty pages still to write, or while the servers
                # still clear away the last run's objects.
                subprocess.run(["sync"], check=False)
                wait_for_quiet_servers()
    ceil = ceiling()
    down_ceil = download_ceiling() if "4d" in scns else None
    report(scns, results, ceil, down_ceil)


def fs_type(path):
    """The file system a folder is on (tmpfs, ext4, ...), as df reports it."""
    p = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True)
    lines = p.stdout.split()
    return lines[-1] if p.returncode == 0 and len(lines) > 1 else "?"


def fs_write_rate():
    """The download folder's own rate: a plain sequential write of scenario 4's size, flushed
    to the device (dd, 16 MiB blocks, fdatasync), MiB/s; the median of three."""
    target = DOWN_DIR / "dd.bin"
    rates = []
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=16M", f"count={max(1, BIG // (16 * MIB))}",
                        "conv=fdatasync", "status=none"], check=False)
        rates.append(BIG / (time.monotonic() - t0) / MIB)
        target.unlink(missing_ok=True)
    return statistics.median(rates)


def report(scns, results, ceil, down_ceil=None):
    rows = []
    lines = [
        f"Sizes: scenario 1/4/5 {BIG / GIB:.2f} GiB, scenario 2 {HUGE / GIB:.2f} GiB, "
        f"scenario 3 {SMALL_COUNT} x 64 KiB; {ROUNDS} round(s), {SHORT_ROUNDS} for scenarios 3 and 4 download; concurrency {CONC} for every tool; "
        f"destination server {DEST} (BENCH_DEST); {NCPU} cores"
        + (f", servers pinned to CPUs {PIN_SERVERS} and tools to {PIN_CLIENT} (BENCH_PIN)." if PIN else ", nothing pinned."),
        "",
        "| scenario | tool | wall s (median, min-max) | MiB/s | CPU s per GiB | of it kernel | peak RSS MiB | servers' CPU s per GiB | machine busy | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scn in scns:
        size = scenario_bytes(scn)
        for (s, name), runs in sorted(results.items()):
            if s != scn:
                continue
            if not runs:
                lines.append(f"| {SCENARIO_TITLE[scn]} | {name} | - | - | - | - | - | - | - | cannot: one endpoint only |")
                continue
            good = [r for r in runs if r[0]]
            if not good:
                lines.append(f"| {SCENARIO_TITLE[scn]} | {name} | - | - | - | - | - | - | - | failed: {runs[-1][4]} |")
                continue
            walls = [r[1] for r in good]
            med = statistics.median(walls)
            cpu = statistics.median([r[2] for r in good]) / (size / GIB)
            rss = max(r[3] for r in good)
            srv = statistics.median([r[5] for r in good]) / (size / GIB)
            kern = [k for k in KERNEL.get((scn, name), []) if k == k]
            kern = statistics.median(kern) / (size / GIB) if kern else float("nan")
            thr = size / med / MIB
            # Client and servers' CPU over what the machine's cores could give in that time.
            busy = statistics.median([(r[2] + r[5]) / (r[1] * NCPU) for r in good])
            rows.append({"scenario": scn, "tool": name, "wall": med, "min": min(walls), "max": max(walls),
                         "mib_s": thr, "cpu_per_gib": cpu, "kernel_cpu_per_gib": kern, "rss_mib": rss, "server_cpu_per_gib": srv,
                         "busy": busy, "runs": len(good),
                         # Each round's wall time (None: failed), for the ratios of one round's runs.
                         "by_round": [r[1] if r[0] else None for r in runs]})
            note = "" if len(good) == len(runs) else f"{len(runs) - len(good)} run(s) failed"
            if scn == "4d":
                note = (note + "; " if note else "") + f"to {fs_type(DOWN_DIR)}"
            # Scenario 6 takes a fraction of a second: milliseconds there.
            d = 3 if med < 1 else 1
            lines.append(f"| {SCENARIO_TITLE[scn]} | {name} | {med:.{d}f} ({min(walls):.{d}f}-{max(walls):.{d}f}) | "
                         f"{thr:.0f} | {cpu:.2f} | {kern:.2f} | {rss:.0f} | {srv:.2f} | {busy:.0%} | {note} |")
    lines.append("")
    if ceil:
        lines.append(f"Server ceiling (barge's upload path, in-memory parts, no reads, to server B): {ceil:.0f} MiB/s.")
    if down_ceil:
        barge = [r for r in rows if r["scenario"] == "4d" and r["tool"] == "barge"]
        reach = f"; barge's scenario 4 download reaches {barge[0]['mib_s'] / down_ceil:.0%} of it" if barge else ""
        lines.append(f"Download ceiling (barge's download path, ranged GETs from server A, bytes dropped, no disk; "
                     f"median of 3): {down_ceil:.0f} MiB/s{reach}.")
        lines.append(f"The download folder ({fs_type(DOWN_DIR)}) takes a plain sequential write of the same size "
                     f"(dd, 16 MiB blocks, fdatasync) at {fs_write_rate():.0f} MiB/s.")
    lines.append("")
    lines += ratios(rows)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    partial = bool(TOOLS or BASELINE) or sorted(SCENARIOS) != ["1", "2", "3", "4", "5"]
    name, png = ("partial", "partial.png") if partial else ("latest", "throughput.png")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / png)
    print("\n".join(lines))
    print(f"\nwritten to bench/results/{name}.md")


def ratios(rows):
    out = ["Ratios (barge / best peer that completed, same run):", ""]
    by = {}
    for r in rows:
        by.setdefault(r["scenario"], []).append(r)
    for scn, rs in by.items():
        for base in (r for r in rs if r["tool"].endswith(" [baseline]")):
            new = [r for r in rs if r["tool"] == base["tool"][: -len(" [baseline]")]]
            if new:
                out.append(f"- {SCENARIO_TITLE[scn]}: {new[0]['tool']} {new[0]['mib_s'] / base['mib_s']:.2f}x its baseline"
                           f"{by_round(new[0], base)}; CPU per GiB "
                           f"{new[0]['cpu_per_gib'] / max(base['cpu_per_gib'], 1e-9):.2f}x")
        rs = [r for r in rs if not r["tool"].endswith(" [baseline]")]
        barge = [r for r in rs if r["tool"] == "barge"]
        peers = [r for r in rs if not r["tool"].startswith("barge")]
        if not barge or not peers:
            continue
        b = barge[0]
        best_thr = max(peers, key=lambda r: r["mib_s"])
        best_cpu = min(peers, key=lambda r: r["cpu_per_gib"])
        line = (f"- {SCENARIO_TITLE[scn]}: throughput {b['mib_s'] / best_thr['mib_s']:.2f}x {best_thr['tool']}"
                f"{by_round(b, best_thr)}; "
                f"CPU per GiB {b['cpu_per_gib'] / max(best_cpu['cpu_per_gib'], 1e-9):.2f}x {best_cpu['tool']}")
        # The reference peers, each once (the best peer is already named above).
        for tool in ("airflow pattern", "airflow DAG (real)", "s5cmd + sync FILE"):
            ref = [r for r in rs if r["tool"] == tool and tool != best_thr["tool"]]
            if ref:
                line += f"; {b['mib_s'] / ref[0]['mib_s']:.2f}x {tool}"
        out.append(line)
    return out


def by_round(b, peer):
    """The peer's time over barge's, round by round, and their median.

    The tools of one round run minutes apart, the rounds up to an hour apart, and this VM's speed
    drifts over an hour (the same copy's client CPU seconds and the servers' move by a third, for
    every tool alike): a ratio of two runs of one round compares the tools on the same machine, a
    ratio of two medians may compare runs from different rounds."""
    pairs = [p / w for w, p in zip(b.get("by_round", []), peer.get("by_round", [])) if w and p]
    if len(pairs) < 2:
        return ""
    each = " / ".join(f"{x:.2f}" for x in pairs)
    return f" by medians, {statistics.median(pairs):.2f}x round by round (median of {each})"


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    scns = sorted({r["scenario"] for r in rows}, key=lambda s: list(SCENARIO_TITLE).index(s))
    tools = sorted({r["tool"] for r in rows})
    fig, ax = plt.subplots(figsize=(12, 5))
    w = 0.8 / max(len(tools), 1)
    for i, t in enumerate(tools):
        ys = [next((r["mib_s"] for r in rows if r["scenario"] == s and r["tool"] == t), 0) for s in scns]
        ax.bar([x + i * w for x in range(len(scns))], ys, w, label=t)
    ax.set_xticks([x + 0.4 - w / 2 for x in range(len(scns))])
    ax.set_xticklabels([SCENARIO_TITLE[s] for s in scns], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("MiB/s (median)")
    ax.set_title("Throughput per tool and scenario (higher is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
