"""Operators and a task group that put barge where the "move big files in chunks" task group was.

The file list is the seed's own: dicts of {src_conn_id, src_bucket, src_key, dest_conn_id,
dest_bucket, dest_key} (or an XComArg that yields them), and connection ids are Airflow's.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Sequence

try:  # Airflow 3
    from airflow.sdk import BaseOperator, TaskGroup
except ImportError:  # Airflow 2
    from airflow.models import BaseOperator
    from airflow.utils.task_group import TaskGroup

from airflow.exceptions import AirflowException

from barge_airflow.hooks.barge import BargeHook
from barge_airflow.triggers.barge import BargeTransferTrigger

KEYS = ("src_conn_id", "src_bucket", "src_key", "dest_conn_id", "dest_bucket", "dest_key")


def _conn_ids(files) -> set[str]:
    return {f.get("src_conn_id", "") for f in files} | {f.get("dest_conn_id", "") for f in files}


def _is_shared(journal: str | None) -> bool:
    return bool(journal) and journal.startswith(("postgres://", "postgresql://"))


def _failures(files) -> list[str]:
    return [
        f"{f.get('src')} -> {f.get('dst')}: {f.get('error')}"
        for f in files
        if f.get("status") == "failed" or f.get("state") == "failed"
    ]


class BargeTransferOperator(BaseOperator):
    """Move every file of the seed's file list with barge.

    On one worker (no journal, or a SQLite file) it runs `barge run` itself: a retry of the task
    runs the same manifest against the same journal, which barge continues instead of starting
    over. `dry_run=True` returns barge's plan (strategy, part size and count per file) and moves
    nothing. With a PostgreSQL journal it submits the files for `barge worker` processes (see
    BargeWorkerOperator) and, with `deferrable=True`, waits for the transfer in the triggerer
    without holding a worker slot; `wait=False` returns at once with the transfer id. The JSON
    summary is the task's return value; a file that failed fails the task, its reason logged.
    """

    template_fields: Sequence[str] = ("files", "journal")
    ui_color = "#c9e4ff"

    def __init__(
        self,
        *,
        files: Any,
        delete_source: bool = False,
        part_size: str | None = None,
        concurrency: int | None = None,
        max_memory: str | None = None,
        bwlimit: str | None = None,
        journal: str | None = None,
        barge_queue: str = "default",
        deferrable: bool = False,
        wait: bool = True,
        dry_run: bool = False,
        poll_interval: float = 5.0,
        barge_path: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dry_run = dry_run
        self.files = files
        self.delete_source = delete_source
        self.part_size = part_size
        self.concurrency = concurrency
        self.max_memory = max_memory
        self.bwlimit = bwlimit
        self.journal = journal
        self.barge_queue = barge_queue
        self.deferrable = deferrable
        self.wait = wait
        self.poll_interval = poll_interval
        self.barge_path = barge_path

    def _manifest(self, files) -> str:
        bad = [i for i, f in enumerate(files) if not isinstance(f, dict) or not set(KEYS) >= set(f)]
        if bad:
            raise AirflowException(f"files: entries {bad[:5]} are not dicts of {', '.join(KEYS)}")
        fd, path = tempfile.mkstemp(prefix="barge-manifest-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(list(files), f)
        return path

    def _options(self, submit: bool) -> list[str]:
        o = []
        if self.part_size:
            o += ["--part-size", str(self.part_size)]
        if self.delete_source:
            o.append("--delete-source")
        if self.bwlimit:
            o += ["--bwlimit", str(self.bwlimit)]
        if not submit:
            if self.concurrency:
                o += ["--concurrency", str(self.concurrency)]
            if self.max_memory:
                o += ["--max-memory", str(self.max_memory)]
            o.append("--quiet")
        return o

    def execute(self, context):
        files = list(self.files)
        hook = BargeHook(barge_path=self.barge_path, journal=self.journal)
        manifest = self._manifest(files)
        try:
            if self.dry_run:
                # The plan (strategy, part size, part count per file); nothing moves.
                proc = hook.run(["run", manifest, "--dry-run", "--json", *self._options(False)],
                                _conn_ids(files))
            elif _is_shared(self.journal) and (self.deferrable or not self.wait):
                proc = hook.run(
                    ["submit", manifest, "--queue", self.barge_queue, "--json", *self._options(True)],
                    _conn_ids(files),
                )
                if proc.returncode != 0:
                    raise AirflowException(f"barge submit failed: {proc.stderr.strip()}")
                tid = json.loads(proc.stdout)["transfer_id"]
                self.log.info("submitted transfer %s (%d files) to queue %s", tid, len(files), self.barge_queue)
                if not self.wait:
                    return {"transfer_id": tid}
                self.defer(
                    trigger=BargeTransferTrigger(tid, self.journal, hook.barge_path, self.poll_interval),
                    method_name="execute_complete",
                )
            else:
                proc = hook.run(["run", manifest, "--json", *self._options(False)],
                                _conn_ids(files))
        finally:
            os.unlink(manifest)
        summary = json.loads(proc.stdout) if proc.stdout.strip() else {}
        failed = _failures(summary.get("files", []))
        for f in failed:
            self.log.error("failed: %s", f)
        if proc.returncode != 0 or failed:
            raise AirflowException(f"{len(failed) or 'some'} file(s) failed; first: {failed[:1]}")
        return summary

    def execute_complete(self, context, event):
        failed = _failures(event.get("files", []))
        for f in failed:
            self.log.error("failed: %s", f)
        if event["transfer"]["state"] != "done" or failed:
            raise AirflowException(
                f"transfer {event['transfer_id']} ended {event['transfer']['state']}: {failed[:1]}"
            )
        return event


class BargeWaitOperator(BaseOperator):
    """Wait (deferred, in the triggerer) for a submitted transfer to settle."""

    template_fields: Sequence[str] = ("transfer_id", "journal")

    def __init__(self, *, transfer_id: Any, journal: str, poll_interval: float = 5.0,
                 barge_path: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.transfer_id = transfer_id
        self.journal = journal
        self.poll_interval = poll_interval
        self.barge_path = barge_path

    def execute(self, context):
        tid = self.transfer_id["transfer_id"] if isinstance(self.transfer_id, dict) else self.transfer_id
        hook = BargeHook(barge_path=self.barge_path, journal=self.journal)
        self.defer(
            trigger=BargeTransferTrigger(tid, self.journal, hook.command()[0], self.poll_interval),
            method_name="execute_complete",
        )

    execute_complete = BargeTransferOperator.execute_complete


class BargeWorkerOperator(BaseOperator):
    """`barge worker --exit-when-idle` on a queue: map it over N instances on the Celery queue the
    seed's chunk tasks used (`large`) and barge's workers share the parts of every submitted
    transfer. `conn_ids`: the Airflow connections the transfers name."""

    template_fields: Sequence[str] = ("conn_ids", "journal")

    def __init__(self, *, journal: str, conn_ids: Any = (), barge_queue: str = "default",
                 concurrency: int | None = None, max_memory: str | None = None,
                 barge_path: str | None = None, instance: int = 0, **kwargs):
        super().__init__(**kwargs)
        # Which of N mapped workers this is (for `.expand(instance=range(N))`); unused else.
        self.instance = instance
        self.journal = journal
        self.conn_ids = conn_ids
        self.barge_queue = barge_queue
        self.concurrency = concurrency
        self.max_memory = max_memory
        self.barge_path = barge_path

    def execute(self, context):
        hook = BargeHook(barge_path=self.barge_path, journal=self.journal)
        args = ["worker", "--queue", self.barge_queue, "--exit-when-idle"]
        if self.concurrency:
            args += ["--concurrency", str(self.concurrency)]
        if self.max_memory:
            args += ["--max-memory", str(self.max_memory)]
        proc = hook.run(args, self.conn_ids)
        if proc.returncode != 0:
            raise AirflowException(f"barge worker exited with status {proc.returncode}")


def barge_move_files(
    files: Any,
    *,
    group_id: str = "move_files",
    queue: str = "large",
    delete_source: bool = False,
    chunk_size: str | None = None,
    journal: str | None = None,
    workers: int = 4,
    conn_ids: Sequence[str] = (),
    barge_queue: str = "default",
    poll_interval: float = 5.0,
    barge_path: str | None = None,
    **kwargs,
) -> TaskGroup:
    """A drop-in for the seed's task group, with its knobs (the file list, the worker queue,
    CHUNK_SIZE as barge's smallest part size, DELETE_SOURCE_FILE). Without a shared journal:
    one task on `queue` that runs the transfer. With a PostgreSQL journal: submit, `workers`
    barge workers on the Airflow queue `queue` (working barge's queue `barge_queue`), and a
    deferred wait; `conn_ids` are the connections the workers need (the file list's, when it is
    a plain list). Other keyword arguments go to every task (retries, pool, ...)."""
    with TaskGroup(group_id=group_id) as group:
        if not _is_shared(journal):
            BargeTransferOperator(
                task_id="transfer", files=files, delete_source=delete_source,
                part_size=chunk_size, journal=journal, queue=queue, barge_path=barge_path,
                **kwargs,
            )
            return group
        ids = sorted(conn_ids or (_conn_ids(files) if isinstance(files, list) else ()))
        submit = BargeTransferOperator(
            task_id="submit", files=files, delete_source=delete_source, part_size=chunk_size,
            journal=journal, wait=False, barge_queue=barge_queue, barge_path=barge_path,
            **kwargs,
        )
        work = BargeWorkerOperator.partial(
            task_id="worker", journal=journal, conn_ids=ids, queue=queue,
            barge_queue=barge_queue, barge_path=barge_path, **kwargs,
        ).expand(instance=list(range(workers)))
        done = BargeWaitOperator(
            task_id="wait", transfer_id=submit.output, journal=journal,
            poll_interval=poll_interval, barge_path=barge_path, **kwargs,
        )
        submit >> work >> done
    return group
