#!/usr/bin/env python3
"""boto3's managed transfers, as a Python user would write them (16 threads, 16 MiB parts).

usage:
  boto3_transfer.py copy     SRC_PROFILE SRC_BUCKET SRC_KEY DST_PROFILE DST_BUCKET DST_KEY
      same profile: managed server-side copy (client.copy); different profiles: the source's
      streaming body fed to the destination's managed upload
  boto3_transfer.py copytree SRC_PROFILE SRC_BUCKET SRC_PREFIX DST_PROFILE DST_BUCKET DST_PREFIX
      every object under a prefix, get + put over a pool of 16 threads
  boto3_transfer.py upload   PROFILE FILE BUCKET KEY
  boto3_transfer.py download PROFILE BUCKET KEY FILE
"""
import concurrent.futures as cf
import sys

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MIB = 1024 * 1024
TC = TransferConfig(multipart_threshold=16 * MIB, multipart_chunksize=16 * MIB, max_concurrency=16)


def client(profile):
    s = boto3.session.Session(profile_name=profile)
    return s.client("s3", config=Config(max_pool_connections=32, s3={"addressing_style": "path"}))


def main():
    op, *a = sys.argv[1:]
    if op == "copy":
        sp, sb, sk, dp, db, dk = a
        src, dst = client(sp), client(dp)
        if sp == dp:
            dst.copy({"Bucket": sb, "Key": sk}, db, dk, Config=TC)
        else:
            body = src.get_object(Bucket=sb, Key=sk)["Body"]
            dst.upload_fileobj(body, db, dk, Config=TC)
    elif op == "copytree":
        sp, sb, spx, dp, db, dpx = a
        src, dst = client(sp), client(dp)
        keys = []
        for page in src.get_paginator("list_objects_v2").paginate(Bucket=sb, Prefix=spx):
            keys += [o["Key"] for o in page.get("Contents", [])]

        def one(k):
            body = src.get_object(Bucket=sb, Key=k)["Body"].read()
            dst.put_object(Bucket=db, Key=dpx + k[len(spx):], Body=body)

        with cf.ThreadPoolExecutor(16) as pool:
            list(pool.map(one, keys))
    elif op == "upload":
        p, f, b, k = a
        client(p).upload_file(f, b, k, Config=TC)
    elif op == "download":
        p, b, k, f = a
        client(p).download_file(b, k, f, Config=TC)
    else:
        sys.exit(f"unknown operation {op}")


if __name__ == "__main__":
    main()
