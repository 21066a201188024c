"""The Airflow DAG pattern barge replaces, as a real DAG (run by bench/airflow_dag.py).

One mapped task per file to read its size and start a multipart upload, one mapped task per
5 MiB chunk (ranged GET + UploadPart) on the heavy-work queue, then one task grouping the ETags
and completing each upload. Connections are boto3 profiles (AWS_CONFIG_FILE) instead of Airflow
connection ids, so no provider package is needed; the calls are the pattern's, one for one.

dag_run.conf: {"files": [{"src_profile", "src_bucket", "src_key", "dst_profile", "dst_bucket",
"dst_key"}], "chunk_size": 5242880}
"""
import math
from datetime import datetime

from airflow.decorators import dag, task

CHUNK_SIZE = 5 * 1024 * 1024


def _client(profile):
    import boto3
    from botocore.config import Config

    s = boto3.session.Session(profile_name=profile)
    return s.client("s3", config=Config(s3={"addressing_style": "path"}))


@dag(
    dag_id="s3_multipart_move",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
    max_active_tasks=16,
)
def s3_multipart_move():
    @task
    def list_files(**context):
        return context["dag_run"].conf["files"]

    @task
    def start_upload(f):
        size = _client(f["src_profile"]).head_object(Bucket=f["src_bucket"], Key=f["src_key"])["ContentLength"]
        upload_id = _client(f["dst_profile"]).create_multipart_upload(
            Bucket=f["dst_bucket"], Key=f["dst_key"]
        )["UploadId"]
        return {**f, "size": size, "upload_id": upload_id}

    @task
    def create_chunk_list(uploads, **context):
        chunk = int(context["dag_run"].conf.get("chunk_size", CHUNK_SIZE))
        chunks = []
        for u in uploads:
            for i in range(max(1, math.ceil(u["size"] / chunk))):
                start = i * chunk
                chunks.append({**u, "part": i + 1, "start": start, "end": min(u["size"], start + chunk) - 1})
        return chunks

    @task(queue="heavy")
    def move_chunk(c):
        body = _client(c["src_profile"]).get_object(
            Bucket=c["src_bucket"], Key=c["src_key"], Range=f"bytes={c['start']}-{c['end']}"
        )["Body"].read()
        etag = _client(c["dst_profile"]).upload_part(
            Bucket=c["dst_bucket"], Key=c["dst_key"], UploadId=c["upload_id"], PartNumber=c["part"], Body=body
        )["ETag"]
        return {"dst_key": c["dst_key"], "ETag": etag, "PartNumber": c["part"]}

    @task
    def complete(uploads, parts):
        grouped = {}
        for p in sorted(parts, key=lambda p: (p["dst_key"], p["PartNumber"])):
            grouped.setdefault(p["dst_key"], []).append({"ETag": p["ETag"], "PartNumber": p["PartNumber"]})
        for u in uploads:
            _client(u["dst_profile"]).complete_multipart_upload(
                Bucket=u["dst_bucket"], Key=u["dst_key"], UploadId=u["upload_id"],
                MultipartUpload={"Parts": grouped[u["dst_key"]]},
            )

    uploads = start_upload.expand(f=list_files())
    parts = move_chunk.expand(c=create_chunk_list(uploads))
    complete(uploads, parts)


s3_multipart_move()
