"""A trigger that waits for a submitted barge transfer to settle, without holding a worker slot."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

SETTLED = {"done", "failed", "aborted"}


class BargeTransferTrigger(BaseTrigger):
    """Polls `barge status ID --json` on the shared journal until the transfer is done, failed
    or aborted; the event carries the transfer and its files. Reading the journal needs no
    store credentials, so the triggerer needs none."""

    def __init__(self, transfer_id: str, journal: str, barge_path: str, poll_interval: float = 5.0):
        super().__init__()
        self.transfer_id = transfer_id
        self.journal = journal
        self.barge_path = barge_path
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "barge_airflow.triggers.barge.BargeTransferTrigger",
            {
                "transfer_id": self.transfer_id,
                "journal": self.journal,
                "barge_path": self.barge_path,
                "poll_interval": self.poll_interval,
            },
        )

    async def status(self) -> dict:
        proc = await asyncio.create_subprocess_exec(
            self.barge_path, "--journal", self.journal, "status", self.transfer_id, "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ),
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"barge status {self.transfer_id}: {err.decode().strip()}")
        return json.loads(out)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                s = await self.status()
            except Exception as e:  # noqa: BLE001 - a journal briefly unreachable: try again
                self.log.warning("%s", e)
                s = None
            if s and s["transfer"]["state"] in SETTLED:
                yield TriggerEvent({"transfer_id": self.transfer_id, **s})
                return
            await asyncio.sleep(self.poll_interval)
