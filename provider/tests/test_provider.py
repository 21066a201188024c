"""The provider against the test bed: DAGs run with dag.test(), connections only as Airflow
connections, every destination read back byte for byte."""

import hashlib
import os
import subprocess
import uuid
from datetime import datetime

import pytest
from airflow.decorators import dag, task

from barge_airflow import get_provider_info
from barge_airflow.operators.barge import (
    BargeTransferOperator,
    barge_move_files,
)
from barge_airflow.triggers.barge import BargeTransferTrigger
from conftest import s3

MIB = 1024 * 1024


def _seed(prefix, sizes):
    """Source objects on server A with other bytes each; the seed's file list to server B."""
    a = s3("A")
    files, want = [], {}
    for i, size in enumerate(sizes):
        body = os.urandom(size)
        key = f"{prefix}in/f{i}.bin"
        a.put_object(Bucket="src", Key=key, Body=body)
        files.append({
            "src_conn_id": "garage_a", "src_bucket": "src", "src_key": key,
            "dest_conn_id": "garage_b", "dest_bucket": "dst", "dest_key": f"{prefix}out/f{i}.bin",
        })
        want[f"{prefix}out/f{i}.bin"] = hashlib.sha256(body).hexdigest()
    return files, want


def _check(want):
    b = s3("B")
    for key, digest in want.items():
        got = b.get_object(Bucket="dst", Key=key)["Body"].read()
        assert hashlib.sha256(got).hexdigest() == digest, key
    left = b.list_multipart_uploads(Bucket="dst").get("Uploads", [])
    assert not [u for u in left if u["Key"] in want], left


def _serialize(d):
    """Airflow 3 runs only DAGs its metadata database holds serialized (dag.test() looks for
    them in the DAG bundles' files): write this in-memory one there first. Airflow 2 runs a DAG
    held in memory as it is."""
    try:
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    except ImportError:
        return
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(d)
    sync_bag_to_db(bag, "dags-folder", None)


def _run(d):
    _serialize(d)
    run = d.test()
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_provider_info_names_every_module():
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-barge"
    assert info["hook-class-names"] == ["barge_airflow.hooks.barge.BargeHook"]


def test_the_trigger_serializes_to_what_builds_it_again():
    t = BargeTransferTrigger("abc123", "postgres://x@h/db", "/usr/bin/barge", 2.5)
    path, kwargs = t.serialize()
    assert path == "barge_airflow.triggers.barge.BargeTransferTrigger"
    again = BargeTransferTrigger(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert kwargs == {"transfer_id": "abc123", "journal": "postgres://x@h/db",
                      "barge_path": "/usr/bin/barge", "poll_interval": 2.5}


def test_the_seed_file_list_from_an_upstream_task_moves_byte_identical(prefix, tmp_path):
    files, want = _seed(prefix, [0, 1000, 6 * MIB + 5])
    journal = str(tmp_path / "journal.sqlite")

    @dag(dag_id=f"barge_one_{uuid.uuid4().hex[:8]}", schedule=None, start_date=datetime(2024, 1, 1))
    def one_worker():
        @task
        def get_file_config_dicts():
            return files

        BargeTransferOperator(task_id="move", files=get_file_config_dicts(), journal=journal,
                              part_size="5MiB")

    run, states = _run(one_worker())
    assert states == {"get_file_config_dicts": "success", "move": "success"}, states
    _check(want)


def test_a_failed_file_fails_the_task_with_its_reason(prefix, tmp_path):
    files, _ = _seed(prefix, [100])
    files.append({**files[0], "src_key": f"{prefix}in/missing.bin", "dest_key": f"{prefix}out/m.bin"})

    @dag(dag_id=f"barge_fail_{uuid.uuid4().hex[:8]}", schedule=None, start_date=datetime(2024, 1, 1))
    def failing():
        BargeTransferOperator(task_id="move", files=files, journal=str(tmp_path / "j.sqlite"))

    run, states = _run(failing())
    assert states == {"move": "failed"}, states


@pytest.fixture
def pg():
    url = os.environ.get("BARGE_TEST_PG_URL")
    if not url:
        pytest.skip("no test PostgreSQL")
    return url


def test_the_task_group_submits_and_two_mapped_workers_move_the_parts(prefix, pg):
    files, want = _seed(prefix, [0, 700, 12 * MIB + 1])
    queue = f"af-{uuid.uuid4().hex[:8]}"

    @dag(dag_id=f"barge_group_{uuid.uuid4().hex[:8]}", schedule=None, start_date=datetime(2024, 1, 1))
    def many_workers():
        barge_move_files(files, journal=pg, workers=2, chunk_size="5MiB", barge_queue=queue,
                         poll_interval=0.5)

    run, states = _run(many_workers())
    assert all(s == "success" for s in states.values()), states
    assert set(states) == {"move_files.submit", "move_files.worker", "move_files.wait"}, states
    _check(want)


def test_the_deferrable_transfer_waits_in_the_trigger(prefix, pg):
    files, want = _seed(prefix, [3000, 6 * MIB])
    queue = f"af-{uuid.uuid4().hex[:8]}"
    # A barge worker outside Airflow, as on the `large` machines.
    env = dict(os.environ)
    from barge_airflow.hooks.barge import BargeHook
    env.update(BargeHook().env_for(["garage_a", "garage_b"]))
    worker = subprocess.Popen(["barge", "--journal", pg, "worker", "--queue", queue],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        @dag(dag_id=f"barge_defer_{uuid.uuid4().hex[:8]}", schedule=None, start_date=datetime(2024, 1, 1))
        def deferred():
            BargeTransferOperator(task_id="move", files=files, journal=pg, barge_queue=queue,
                                  deferrable=True, poll_interval=0.5)

        run, states = _run(deferred())
    finally:
        worker.terminate()
        worker.wait()
    assert states == {"move": "success"}, states
    _check(want)


def test_a_task_killed_and_retried_continues_the_transfer(prefix, tmp_path):
    import json
    import signal
    import sys
    import time

    files, want = _seed(prefix, [24 * MIB])
    journal = str(tmp_path / "journal.sqlite")
    args = dict(files=files, journal=journal, part_size="5MiB", concurrency=1, bwlimit="8MiB")
    # The task's process, killed with everything it started (a worker lost mid-task).
    code = (
        "import json, sys\n"
        "from barge_airflow.operators.barge import BargeTransferOperator\n"
        "a = json.loads(sys.argv[1])\n"
        "BargeTransferOperator(task_id='move', **a).execute({})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def parts_done():
        out = subprocess.run(["barge", "--journal", journal, "status", "--json"],
                             capture_output=True, text=True)
        try:
            return sum(f["parts_done"] for f in json.loads(out.stdout)["files"])
        except (ValueError, KeyError):
            return 0

    t0 = time.monotonic()
    while parts_done() < 2:
        assert proc.poll() is None, "the task ended before the kill"
        assert time.monotonic() - t0 < 60, "no progress"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    recorded = parts_done()
    assert recorded < 5

    # The retry: the same task, the same file list.
    @dag(dag_id=f"barge_retry_{uuid.uuid4().hex[:8]}", schedule=None, start_date=datetime(2024, 1, 1))
    def retried():
        BargeTransferOperator(task_id="move", **{**args, "bwlimit": None})

    run, states = _run(retried())
    assert states == {"move": "success"}, states
    summary = run.get_task_instance("move").xcom_pull(task_ids="move")
    assert summary["resumed"] is True, summary
    assert summary["parts_reused"] >= recorded, summary
    _check(want)


def test_the_example_dag_parses():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "example_dags" / "barge_move_files.py"
    spec = importlib.util.spec_from_file_location("barge_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    d = mod.move_files()
    assert d.dag_id == "barge_move_files"
    assert {"get_file_config_dicts", "move_files.transfer"} <= set(d.task_ids), d.task_ids


def test_a_file_over_5_gib_is_planned_by_a_dry_run_and_nothing_moves(prefix, tmp_path):
    # A 6 GiB source made on the server from one 8 MiB object (UploadPartCopy): no 6 GiB upload.
    a = s3("A")
    a.put_object(Bucket="src", Key=f"{prefix}block", Body=os.urandom(8 * MIB))
    key = f"{prefix}in/huge.bin"
    up = a.create_multipart_upload(Bucket="src", Key=key)["UploadId"]
    parts = []
    for n in range(1, 769):
        r = a.upload_part_copy(Bucket="src", Key=key, UploadId=up, PartNumber=n,
                               CopySource={"Bucket": "src", "Key": f"{prefix}block"})
        parts.append({"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]})
    a.complete_multipart_upload(Bucket="src", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    files = [{"src_conn_id": "garage_a", "src_bucket": "src", "src_key": key,
              "dest_conn_id": "garage_b", "dest_bucket": "dst", "dest_key": f"{prefix}out/huge.bin"}]

    @dag(dag_id=f"barge_plan_{uuid.uuid4().hex[:8]}", schedule=None, start_date=datetime(2024, 1, 1))
    def planned():
        BargeTransferOperator(task_id="plan", files=files, dry_run=True,
                              journal=str(tmp_path / "j.sqlite"), part_size="5MiB")

    run, states = _run(planned())
    assert states == {"plan": "success"}, states
    plan = run.get_task_instance("plan").xcom_pull(task_ids="plan")["files"][0]
    assert plan["status"] == "planned" and plan["size"] == 6 * 1024 * MIB, plan
    # 5 MiB parts would need 1,229: fine; the plan keeps within 10,000 parts of at least 5 MiB.
    assert plan["parts"] <= 10_000 and plan["part_size"] >= 5 * MIB, plan
    b = s3("B")
    assert "Contents" not in b.list_objects_v2(Bucket="dst", Prefix=f"{prefix}out/"), "nothing moved"


def test_a_retried_submit_finds_the_same_transfer(prefix, pg):
    files, _ = _seed(prefix, [100])
    queue = f"af-{uuid.uuid4().hex[:8]}"
    op = BargeTransferOperator(task_id="submit", files=files, journal=pg, wait=False,
                               barge_queue=queue)
    first = op.execute({})
    again = op.execute({})
    assert again == first, (first, again)
    subprocess.run(["barge", "--journal", pg, "abort", first["transfer_id"]], check=True,
                   capture_output=True)


def test_google_and_azure_connections_reach_barge_as_airflow_writes_them(tmp_path, monkeypatch):
    """Airflow's own URI form of a `wasb` and a `google_cloud_platform` connection (what the hook
    hands barge) is read by barge: the run gets as far as the store (nothing listens there) and
    fails on that, never on the connection, and no secret reaches its output."""
    import json

    from barge_airflow.hooks.barge import BargeHook

    secret = "k3y+/with=signs" + uuid.uuid4().hex
    monkeypatch.setenv("AIRFLOW_CONN_LAKE_WASB", json.dumps({
        "conn_type": "wasb", "login": "acct", "password": secret,
        "host": "http://127.0.0.1:9/acct",
    }))
    monkeypatch.setenv("AIRFLOW_CONN_LAKE_GCS", json.dumps({
        "conn_type": "google_cloud_platform",
        "extra": {"keyfile_dict": {"type": "service_account", "client_email": "x@y", "private_key": secret}},
    }))
    hook = BargeHook()
    env = hook.env_for(["lake_wasb", "lake_gcs", "google_cloud_default"])
    assert env["AIRFLOW_CONN_LAKE_WASB"].startswith("wasb://"), "Airflow's URI form"

    def fetch(conn_id):
        """barge run of one object from `conn_id` to a local file."""
        manifest = tmp_path / "m.json"
        manifest.write_text(json.dumps([{
            "src_conn_id": conn_id, "src_bucket": "cont", "src_key": "k",
            "dest_conn_id": "local", "dest_bucket": "", "dest_key": str(tmp_path / "out"),
        }]))
        proc = hook.run(["--journal", "none", "run", str(manifest), "--retries", "1"],
                        conn_ids=[conn_id], check=False)
        assert proc.returncode == 1, proc.stderr
        assert "not an Airflow connection barge can use" not in proc.stderr, proc.stderr
        assert secret not in proc.stderr and secret not in proc.stdout
        assert not (tmp_path / "out").exists()
        return proc.stderr

    err = fetch("lake_wasb")
    assert "127.0.0.1:9" in err or "lake_wasb" in err, err
    # The Google connection's key (not a usable one) is read from keyfile_dict and refused by
    # name, without its text.
    err = fetch("lake_gcs")
    assert "Google credentials" in err, err
