"""BargeHook: Airflow connections handed to the `barge` binary, and the binary run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

try:  # Airflow 3
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 2
    from airflow.hooks.base import BaseHook

from airflow.exceptions import AirflowException, AirflowNotFoundException

# Connection ids barge resolves itself: the local file system, and each cloud's default
# credentials chain (AWS, Google ADC, Azure's environment) when no Airflow connection of that
# name exists.
LOCAL = {"", "local"}
DEFAULT_CHAINS = {"aws_default", "google_cloud_default", "azure_default", "wasb_default"}


class BargeHook(BaseHook):
    """Runs barge with the Airflow connections it needs.

    Each connection id is looked up the way Airflow itself resolves it (metastore, secrets
    backends, environment) and handed to the barge process as `AIRFLOW_CONN_{ID}` in its
    environment, in Airflow's URI form, which barge reads directly. No credential is written to
    a file or put on a command line.
    """

    conn_name_attr = "barge_conn_id"
    hook_name = "barge"

    def __init__(self, barge_path: str | None = None, journal: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.barge_path = barge_path or shutil.which("barge")
        self.journal = journal

    def env_for(self, conn_ids) -> dict[str, str]:
        """The process environment: this one, plus each connection as AIRFLOW_CONN_{ID}."""
        env = dict(os.environ)
        for cid in sorted(set(conn_ids)):
            if cid in LOCAL:
                continue
            try:
                conn = self.get_connection(cid)
            except AirflowNotFoundException:
                if cid in DEFAULT_CHAINS:
                    continue
                raise
            env[f"AIRFLOW_CONN_{cid.upper()}"] = conn.get_uri()
        return env

    def command(self, *args: str) -> list[str]:
        if not self.barge_path:
            raise AirflowException(
                "the barge binary is not on this worker's PATH: pip install barge's wheel "
                "(see its README) or pass barge_path"
            )
        cmd = [self.barge_path]
        if self.journal:
            cmd += ["--journal", self.journal]
        return cmd + list(args)

    def run(self, args, conn_ids=(), check: bool = True) -> subprocess.CompletedProcess:
        """Run barge; its messages go to the task log line by line, its stdout is returned."""
        cmd = self.command(*args)
        self.log.info("running %s", " ".join(cmd))
        proc = subprocess.Popen(
            cmd,
            env=self.env_for(conn_ids),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate()
        for line in err.splitlines():
            self.log.info("barge: %s", line)
        if check and proc.returncode not in (0, 1):
            raise AirflowException(
                f"barge exited with status {proc.returncode}: "
                f"{(err.strip().splitlines() or ['no message'])[-1]}"
            )
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def status(self, transfer_id: str) -> dict:
        """`barge status ID --json`: the transfer and its files."""
        proc = self.run(["status", transfer_id, "--json"])
        return json.loads(proc.stdout)
