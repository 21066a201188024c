"""Set-up for the provider's tests: Airflow's home in a temporary folder (run.sh migrates its
database), the test bed's Garage servers as Airflow connections defined only in the
environment, and barge's binary on the PATH."""

import os
import uuid

import boto3
import pytest
from botocore.config import Config


def _env(name):
    v = os.environ.get(name)
    if not v:
        pytest.exit(f"{name} is not set: run provider/tests/run.sh (it starts the test bed)", 2)
    return v


def conn_uri(which):
    """An Airflow `aws` connection in the URI form, as a deployment would define it."""
    from urllib.parse import quote

    kid = quote(_env(f"BARGE_TEST_{which}_KEY_ID"), safe="")
    sec = quote(_env(f"BARGE_TEST_{which}_SECRET"), safe="")
    ep = quote(_env(f"BARGE_TEST_{which}_ENDPOINT"), safe="")
    return f"aws://{kid}:{sec}@/?region_name=us-east-1&endpoint_url={ep}"


@pytest.fixture(scope="session", autouse=True)
def connections():
    os.environ["AIRFLOW_CONN_GARAGE_A"] = conn_uri("A")
    os.environ["AIRFLOW_CONN_GARAGE_B"] = conn_uri("B")


def s3(which):
    return boto3.client(
        "s3",
        endpoint_url=_env(f"BARGE_TEST_{which}_ENDPOINT"),
        aws_access_key_id=_env(f"BARGE_TEST_{which}_KEY_ID"),
        aws_secret_access_key=_env(f"BARGE_TEST_{which}_SECRET"),
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def prefix():
    return f"af-{uuid.uuid4().hex}/"
