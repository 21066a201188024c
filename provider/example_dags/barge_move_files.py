"""The seed's "move big files in chunks" DAG with its task group replaced by barge's.

The file list is the same task's; the connections are the same Airflow connections. Without
BARGE_JOURNAL one task on the `large` queue moves everything; with a PostgreSQL journal, four
barge workers on `large` share the parts and the wait runs in the triggerer.
"""
import os
from datetime import datetime

from airflow.decorators import dag, task

from barge_airflow.operators.barge import barge_move_files


@dag(dag_id="barge_move_files", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def move_files():
    @task
    def get_file_config_dicts(**context):
        return context["dag_run"].conf["files"]

    barge_move_files(
        get_file_config_dicts(),
        queue="large",
        delete_source=False,
        journal=os.environ.get("BARGE_JOURNAL"),
        workers=4,
        conn_ids=["aws_default", "archive"],
    )


move_files()
