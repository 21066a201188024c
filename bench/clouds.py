"""S3 -> GCS and S3 -> Azure: barge beside rclone (see clouds.sh). Medians of CLOUDS_ROUNDS."""
import json, os, statistics, subprocess, tempfile, time, urllib.request, uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BARGE = os.path.join(ROOT, "target", "release", "barge")
SIZE = int(os.environ.get("CLOUDS_SIZE", str(1 << 30)))
ROUNDS = int(os.environ.get("CLOUDS_ROUNDS", "3"))
E = os.environ
work = tempfile.mkdtemp(prefix="barge-clouds-")
config = os.path.join(work, "config.toml")
with open(config, "w") as f:
    f.write(f"""[connections.ga]
endpoint = "{E['BARGE_TEST_A_ENDPOINT']}"
region = "us-east-1"
access_key_id_env = "BARGE_TEST_A_KEY_ID"
secret_access_key_env = "BARGE_TEST_A_SECRET"

[connections.gcs]
kind = "gcs"
endpoint = "{E['BARGE_TEST_GCS_ENDPOINT']}"
anonymous = true

[connections.azure]
kind = "azure"
connection_string_env = "BARGE_TEST_AZ_CONNECTION_STRING"
""")


def account_sas(account, key):
    """An account SAS for rclone (1.60 reaches an Azurite account on a path only by SAS URL)."""
    import base64, datetime, hashlib, hmac, urllib.parse
    now = datetime.datetime.now(datetime.timezone.utc)
    st = (now - datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    se = (now + datetime.timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sv, sp, ss, srt, spr = "2021-12-02", "rwdlac", "b", "sco", "https,http"
    to_sign = f"{account}\n{sp}\n{ss}\n{srt}\n{st}\n{se}\n\n{spr}\n{sv}\n\n"
    sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(),
                                    hashlib.sha256).digest()).decode()
    return urllib.parse.urlencode({"sv": sv, "ss": ss, "srt": srt, "sp": sp, "st": st,
                                   "se": se, "spr": spr, "sig": sig})
journal = os.path.join(work, "journal.sqlite")
# rclone remotes from the environment: never a file holding the keys.
renv = dict(E)
renv.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 cannot load one into its own transport
renv.update({
    "RCLONE_CONFIG_S3A_TYPE": "s3", "RCLONE_CONFIG_S3A_PROVIDER": "Other",
    "RCLONE_CONFIG_S3A_ENDPOINT": E["BARGE_TEST_A_ENDPOINT"],
    "RCLONE_CONFIG_S3A_ACCESS_KEY_ID": E["BARGE_TEST_A_KEY_ID"],
    "RCLONE_CONFIG_S3A_SECRET_ACCESS_KEY": E["BARGE_TEST_A_SECRET"],
    "RCLONE_CONFIG_S3A_REGION": "us-east-1",
    "RCLONE_CONFIG_GCSR_TYPE": "google cloud storage",
    "RCLONE_CONFIG_GCSR_ENDPOINT": E["BARGE_TEST_GCS_ENDPOINT"] + "/storage/v1/",
    "RCLONE_CONFIG_GCSR_ANONYMOUS": "true",
    "RCLONE_CONFIG_AZR_TYPE": "azureblob",
    "RCLONE_CONFIG_AZR_SAS_URL": E["BARGE_TEST_AZ_ENDPOINT"] + "?"
    + account_sas(E["BARGE_TEST_AZ_ACCOUNT"], E["BARGE_TEST_AZ_KEY"]),
})


def timed(cmd, env=None):
    out = subprocess.run(["/usr/bin/time", "-f", "TIME %e %U %S"] + cmd, env=env or E,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {out.stderr[-2000:]}")
    line = [l for l in out.stderr.splitlines() if l.startswith("TIME ")][-1]
    _, wall, user, sys_ = line.split()
    return float(wall), float(user) + float(sys_)


def barge(*args):
    return [BARGE, "--config", config, "--journal", journal, *args]


bucket = "bench-" + uuid.uuid4().hex[:12]
req = urllib.request.Request(E["BARGE_TEST_GCS_ENDPOINT"] + "/storage/v1/b?project=barge",
                             data=json.dumps({"name": bucket}).encode(), method="POST",
                             headers={"content-type": "application/json"})
urllib.request.urlopen(req).read()
subprocess.run(["rclone", "mkdir", f"azr:{bucket}"], env=renv, check=True)

src_file = os.path.join(work, "obj.bin")
with open(src_file, "wb") as f:
    left = SIZE
    while left:
        n = min(left, 64 << 20)
        f.write(os.urandom(n))
        left -= n
subprocess.run(barge("cp", src_file, "ga:src/bench-clouds/obj.bin", "--quiet"), check=True)
os.remove(src_file)

runs = {}
for r in range(ROUNDS):
    for dest, bar, rcl in [
        ("GCS", f"gcs:{bucket}", f"gcsr:{bucket}"),
        ("Azure", f"azure:{bucket}", f"azr:{bucket}"),
    ]:
        key = f"r{r}/obj.bin"
        runs.setdefault(("barge", dest), []).append(
            timed(barge("cp", "ga:src/bench-clouds/obj.bin", f"{bar}/barge/{key}", "--quiet")))
        runs.setdefault(("rclone", dest), []).append(
            timed(["rclone", "copyto", "s3a:src/bench-clouds/obj.bin", f"{rcl}/rclone/{key}"],
                  env=renv))

# Every copy of the last round is the source's bytes: read both sides and compare CRC32Cs.
for dest, bar in [("GCS", f"gcs:{bucket}"), ("Azure", f"azure:{bucket}")]:
    for tool in ("barge", "rclone"):
        out = subprocess.run(barge("verify", "ga:src/bench-clouds/obj.bin",
                                   f"{bar}/{tool}/r{ROUNDS - 1}/obj.bin"),
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{tool} -> {dest}: not identical: {out.stderr}")

gib = SIZE / (1 << 30)
lines = [f"S3 (Garage) to GCS (fake-gcs-server) and Azure (Azurite), one {SIZE >> 20} MiB object, "
         f"{ROUNDS} rounds, medians; {os.cpu_count()} cores. Every last copy verified.", "",
         "| destination | tool | seconds | MiB/s | CPU-s | CPU-s per GiB |", "|---|---|---|---|---|---|"]
for dest in ("GCS", "Azure"):
    for tool in ("barge", "rclone"):
        w = statistics.median(x[0] for x in runs[(tool, dest)])
        c = statistics.median(x[1] for x in runs[(tool, dest)])
        lines.append(f"| {dest} | {tool} | {w:.2f} | {SIZE / (1 << 20) / w:.0f} | {c:.2f} | {c / gib:.2f} |")
text = "\n".join(lines) + "\n"
print(text)
os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
with open(os.path.join(ROOT, "bench", "results", "clouds.md"), "w") as f:
    f.write(text)
