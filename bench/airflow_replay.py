#!/usr/bin/env python3
"""Replay of the Airflow DAG pattern barge replaces, call for call:

head_object -> create_multipart_upload -> one task per 5 MiB chunk (ranged get_object, whole chunk
in memory, upload_part) spread over a pool of workers -> group ETags -> complete_multipart_upload.

The Airflow scheduler's own overhead (seconds per task) is left out, which flatters the pattern.

usage: airflow_replay.py SRC_PROFILE SRC_BUCKET SRC_PREFIX_OR_KEY DST_PROFILE DST_BUCKET DST_PREFIX [--prefix]
Profiles name [profile X] sections of AWS_CONFIG_FILE (endpoint, keys).
"""
import concurrent.futures as cf
import math
import sys

import boto3
from botocore.config import Config

CHUNK_SIZE = 5 * 1024 * 1024
WORKERS = 16  # the dedicated worker queue's slots


def client(profile):
    s = boto3.session.Session(profile_name=profile)
    return s.client("s3", config=Config(max_pool_connections=WORKERS * 2, s3={"addressing_style": "path"}))


def main():
    args = sys.argv[1:]
    prefix_mode = "--prefix" in args
    args = [a for a in args if a != "--prefix"]
    sp, sb, sk, dp, db, dk = args
    src, dst = client(sp), client(dp)
    if prefix_mode:
        keys = []
        for page in src.get_paginator("list_objects_v2").paginate(Bucket=sb, Prefix=sk):
            keys += [o["Key"] for o in page.get("Contents", [])]
        files = [(k, dk + k[len(sk):]) for k in keys]
    else:
        files = [(sk, dk)]

    # get_filesize, get_num_chunks, initialize_multipart_upload: one task per file.
    uploads = {}
    for k, d in files:
        size = src.head_object(Bucket=sb, Key=k)["ContentLength"]
        upload_id = dst.create_multipart_upload(Bucket=db, Key=d)["UploadId"]
        uploads[d] = (k, size, upload_id)

    # create_chunk_list + move_chunk: one task per chunk of every file.
    chunks = []
    for d, (k, size, upload_id) in uploads.items():
        for i in range(max(1, math.ceil(size / CHUNK_SIZE))):
            start = i * CHUNK_SIZE
            end = min(size, start + CHUNK_SIZE) - 1
            chunks.append((k, d, upload_id, i + 1, start, end))

    def move_chunk(c):
        k, d, upload_id, n, start, end = c
        body = src.get_object(Bucket=sb, Key=k, Range=f"bytes={start}-{end}")["Body"].read()
        etag = dst.upload_part(Bucket=db, Key=d, UploadId=upload_id, PartNumber=n, Body=body)["ETag"]
        return d, {"ETag": etag, "PartNumber": n}

    with cf.ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(move_chunk, chunks))

    # group_parts_info (by destination key, as the pattern does) + complete: one task per file.
    grouped = {}
    for d, part in sorted(results, key=lambda r: (r[0], r[1]["PartNumber"])):
        grouped.setdefault(d, []).append(part)
    for d, parts in grouped.items():
        dst.complete_multipart_upload(
            Bucket=db, Key=d, UploadId=uploads[d][2], MultipartUpload={"Parts": parts}
        )


if __name__ == "__main__":
    main()
