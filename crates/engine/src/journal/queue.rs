//! The work queue inside the SQL journal: what lets many `barge worker` processes, on many
//! machines, share one transfer.
//!
//! Each unit of work is a row of `barge_work`: a file-level task (`plan`: stat, plan, start the
//! upload or move a small object whole; `finalize`: complete, verify, delete the source) or one
//! part. A worker claims rows under a lease (`owner`, `lease_until`, in the database's clock),
//! renews its leases while it works, and marks a row done only while it still owns it. A row
//! whose worker died goes back to `ready` when its lease expires. On PostgreSQL claims use
//! `FOR UPDATE SKIP LOCKED`, so workers never wait on each other; SQLite has one writer, and the
//! same `UPDATE ... RETURNING` is atomic there.

use sqlx::Row;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Executor};

use async_trait::async_trait;

use super::{
    FileId, FileRecord, FileState, Journal, SqlJournal, TransferRecord, TransferState, conn_to_str,
    now,
};
use crate::error::{EngineError, Result};
use crate::input::TransferSpec;
use crate::plan::FilePlan;
use barge_store::PartReceipt;

/// What a row of work asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// Stat the source, plan the file, start its upload (or move a small file whole).
    Plan,
    /// Move one part.
    Part,
    /// Complete the upload, verify it, delete the source when asked.
    Finalize,
}

/// One claimed unit of work.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Task {
    pub transfer: String,
    pub file: FileId,
    pub kind: TaskKind,
    /// The part number (1-based) of a part; 0 for file-level work.
    pub number: u32,
    /// How many times it has been claimed (more than once: a worker died or gave it up).
    pub claims: u32,
}

/// The part tasks left to claim on a queue, and the other workers holding some there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartDemand {
    pub ready: u64,
    pub other_workers: u64,
}

/// The work queue as the scheduler (`cluster::Worker`) sees it: tasks claimed under leases,
/// each outcome recorded while the task is held, a file's finalize queued once by whoever
/// records its last part. Two implementations: the SQL journal's (`barge worker`, `submit`,
/// `cp` with a PostgreSQL journal: many processes, leases in the database's clock) and
/// [`LocalQueue`](super::local::LocalQueue) (`cp`/`run` with SQLite or no journal: one process,
/// tasks in memory, every durable fact written through to the journal).
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Other processes share it: leases must be renewed, expired ones reclaimed, and a task
    /// left unfinished is someone else's to take up.
    fn shared(&self) -> bool;
    /// Up to `parts` part tasks and `files` file-level tasks (finalize first, then plan).
    async fn claim_split(
        &self,
        owner: &str,
        queue: &str,
        parts: usize,
        files: usize,
        lease_ms: u64,
    ) -> Result<Vec<Task>>;
    async fn renew(&self, owner: &str, tasks: &[Task], lease_ms: u64) -> Result<u64>;
    async fn reclaim_expired(&self) -> Result<u64>;
    async fn release(&self, owner: &str) -> Result<u64>;
    async fn task_done(&self, task: &Task, owner: &str) -> Result<bool>;
    /// A part's receipt, and its task done; true when it was the file's last (finalize queued).
    async fn part_recorded(
        &self,
        task: &Task,
        owner: &str,
        upload_id: &str,
        receipt: &PartReceipt,
        queue: &str,
    ) -> Result<bool>;
    /// A planned file's upload, and a task for each of `parts` (its finalize at once when none
    /// is left to move); the plan task done. False: the plan task was lost to another worker.
    async fn start_parts(
        &self,
        task: &Task,
        owner: &str,
        upload_id: &str,
        parts: &[u32],
        queue: &str,
    ) -> Result<bool>;
    async fn redo_parts(&self, task: &Task, numbers: &[u32]) -> Result<()>;
    async fn file(&self, transfer: &str, file: FileId) -> Result<Option<FileRecord>>;
    async fn receipts(
        &self,
        transfer: &str,
        file: FileId,
        upload: &str,
    ) -> Result<Vec<PartReceipt>>;
    async fn save_plan(&self, transfer: &str, plan: &FilePlan) -> Result<()>;
    /// A file failed (or another state that is written at once).
    async fn file_state(
        &self,
        transfer: &str,
        file: FileId,
        state: FileState,
        error: Option<&str>,
    ) -> Result<()>;
    /// A file copied and verified. `durable`: return only once the record is written (before
    /// its source is deleted); otherwise it may be written with others shortly after.
    async fn file_completed(&self, transfer: &str, file: FileId, durable: bool) -> Result<()>;
    async fn settle(&self, transfer: &str) -> Result<Option<TransferState>>;
    async fn transfer_state(&self, transfer: &str) -> Result<Option<TransferState>>;
    async fn unfinished_work(&self, queue: &str) -> Result<u64>;
    /// The part tasks ready on `queue`, and how many workers other than `owner` hold part
    /// tasks there: what a fair share of the parts left is. None where no one else claims.
    async fn part_demand(&self, _queue: &str, _owner: &str) -> Result<Option<PartDemand>> {
        Ok(None)
    }
    /// How many workers hold tasks of `transfer` now (one process's own queue: 1).
    async fn transfer_workers(&self, _transfer: &str) -> Result<u64> {
        Ok(1)
    }
    /// The transfer's record and the queue it was submitted to.
    async fn transfer_request(&self, transfer: &str) -> Result<Option<(TransferRecord, String)>>;
}

#[async_trait]
impl WorkQueue for SqlJournal {
    fn shared(&self) -> bool {
        true
    }
    async fn claim_split(
        &self,
        owner: &str,
        queue: &str,
        parts: usize,
        files: usize,
        lease_ms: u64,
    ) -> Result<Vec<Task>> {
        SqlJournal::claim_split(self, owner, queue, parts, files, lease_ms).await
    }
    async fn renew(&self, owner: &str, tasks: &[Task], lease_ms: u64) -> Result<u64> {
        SqlJournal::renew(self, owner, tasks, lease_ms).await
    }
    async fn reclaim_expired(&self) -> Result<u64> {
        SqlJournal::reclaim_expired(self).await
    }
    async fn release(&self, owner: &str) -> Result<u64> {
        SqlJournal::release(self, owner).await
    }
    async fn task_done(&self, task: &Task, owner: &str) -> Result<bool> {
        SqlJournal::task_done(self, task, owner).await
    }
    async fn part_recorded(
        &self,
        task: &Task,
        owner: &str,
        upload_id: &str,
        receipt: &PartReceipt,
        queue: &str,
    ) -> Result<bool> {
        SqlJournal::part_recorded(self, task, owner, upload_id, receipt, queue).await
    }
    async fn start_parts(
        &self,
        task: &Task,
        owner: &str,
        upload_id: &str,
        parts: &[u32],
        queue: &str,
    ) -> Result<bool> {
        SqlJournal::start_parts(self, task, owner, upload_id, parts, queue).await
    }
    async fn redo_parts(&self, task: &Task, numbers: &[u32]) -> Result<()> {
        SqlJournal::redo_parts(self, task, numbers).await
    }
    async fn file(&self, transfer: &str, file: FileId) -> Result<Option<FileRecord>> {
        SqlJournal::file(self, transfer, file).await
    }
    async fn receipts(
        &self,
        transfer: &str,
        file: FileId,
        upload: &str,
    ) -> Result<Vec<PartReceipt>> {
        Journal::receipts(self, transfer, file, upload).await
    }
    async fn save_plan(&self, transfer: &str, plan: &FilePlan) -> Result<()> {
        Journal::save_plans(self, transfer, std::slice::from_ref(plan)).await
    }
    async fn file_state(
        &self,
        transfer: &str,
        file: FileId,
        state: FileState,
        error: Option<&str>,
    ) -> Result<()> {
        Journal::file_state(self, transfer, file, state, error).await
    }
    async fn file_completed(&self, transfer: &str, file: FileId, _durable: bool) -> Result<()> {
        Journal::file_state(self, transfer, file, FileState::Completed, None).await
    }
    async fn settle(&self, transfer: &str) -> Result<Option<TransferState>> {
        SqlJournal::settle(self, transfer).await
    }
    async fn transfer_state(&self, transfer: &str) -> Result<Option<TransferState>> {
        SqlJournal::transfer_state(self, transfer).await
    }
    async fn unfinished_work(&self, queue: &str) -> Result<u64> {
        SqlJournal::unfinished_work(self, queue).await
    }
    async fn part_demand(&self, queue: &str, owner: &str) -> Result<Option<PartDemand>> {
        SqlJournal::part_demand(self, queue, owner).await.map(Some)
    }
    async fn transfer_workers(&self, transfer: &str) -> Result<u64> {
        SqlJournal::transfer_workers(self, transfer).await
    }
    async fn transfer_request(&self, transfer: &str) -> Result<Option<(TransferRecord, String)>> {
        let Some(record) = Journal::transfer(self, transfer).await? else {
            return Ok(None);
        };
        let queue = self.submitted_queue(transfer).await?.unwrap_or_default();
        Ok(Some((record, queue)))
    }
}

/// Rows per multi-row INSERT: well under PostgreSQL's 65,535 bind parameters.
const BATCH: usize = 200;

/// The journal's key for a destination (connection name, bucket, key).
fn dst_key(s: &TransferSpec) -> String {
    format!(
        "{}\n{}\n{}",
        conn_to_str(&s.dst.conn),
        s.dst.path.bucket,
        s.dst.path.key
    )
}

impl SqlJournal {
    /// The database's clock in milliseconds: leases do not depend on workers' clocks agreeing.
    fn now_ms(&self) -> &'static str {
        if self.pg {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        } else {
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
        }
    }

    fn skip_locked(&self) -> &'static str {
        if self.pg {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        }
    }

    /// Record a transfer for workers: the transfer, one pending row per file, one `plan` task
    /// per file, and a claim on every destination. All or nothing: a destination that an
    /// unfinished transfer already writes refuses the whole submission.
    pub async fn submit(
        &self,
        t: &TransferRecord,
        queue: &str,
        specs: &[TransferSpec],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        // Destinations first: a conflict stops here, before anything else is written.
        for (chunk_no, chunk) in specs.chunks(BATCH).enumerate() {
            let values = placeholders(chunk.len(), 3);
            let sql = format!(
                "INSERT INTO barge_destinations (dst, transfer_id, file_id) VALUES {values} \
                 ON CONFLICT (dst) DO NOTHING"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (i, s) in chunk.iter().enumerate() {
                q = q
                    .bind(dst_key(s))
                    .bind(&t.id)
                    .bind((chunk_no * BATCH + i) as i64);
            }
            let inserted = q.execute(&mut *tx).await.map_err(|e| self.err(e))?;
            if inserted.rows_affected() != chunk.len() as u64 {
                drop(tx);
                return Err(self.destination_conflict(chunk).await);
            }
        }
        sqlx::query(
            "INSERT INTO barge_transfers (id, fingerprint, created_at, updated_at, state, spec, queue) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.id)
        .bind(&t.fingerprint)
        .bind(t.created_at)
        .bind(t.updated_at)
        .bind(t.state.as_str())
        .bind(&t.spec)
        .bind(queue)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        let ts = now();
        for (chunk_no, chunk) in specs.chunks(BATCH).enumerate() {
            let values = placeholders(chunk.len(), 8);
            let sql = format!(
                "INSERT INTO barge_files (transfer_id, file_id, src_conn, src_bucket, src_key, \
                 dst_conn, dst_bucket, dst_key, size, attrs, strategy, part_size, part_count, \
                 state, updated_at) \
                 SELECT v.*, 0, '{{}}', 'single-put', 0, 0, 'pending', {ts} FROM (VALUES {values}) AS v"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (i, s) in chunk.iter().enumerate() {
                q = q
                    .bind(&t.id)
                    .bind((chunk_no * BATCH + i) as i64)
                    .bind(conn_to_str(&s.src.conn))
                    .bind(&s.src.path.bucket)
                    .bind(&s.src.path.key)
                    .bind(conn_to_str(&s.dst.conn))
                    .bind(&s.dst.path.bucket)
                    .bind(&s.dst.path.key);
            }
            q.execute(&mut *tx).await.map_err(|e| self.err(e))?;
            let values = placeholders(chunk.len(), 3);
            let sql = format!(
                "INSERT INTO barge_work (transfer_id, file_id, queue, kind, number, state) \
                 SELECT v.*, 'plan', 0, 'ready' FROM (VALUES {values}) AS v"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (i, _) in chunk.iter().enumerate() {
                q = q
                    .bind(&t.id)
                    .bind((chunk_no * BATCH + i) as i64)
                    .bind(queue);
            }
            q.execute(&mut *tx).await.map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The error for a submission whose destination an unfinished transfer already writes.
    async fn destination_conflict(&self, specs: &[TransferSpec]) -> EngineError {
        for s in specs {
            let held = sqlx::query(
                "SELECT d.transfer_id FROM barge_destinations d \
                 JOIN barge_transfers t ON t.id = d.transfer_id WHERE d.dst = $1",
            )
            .bind(dst_key(s))
            .fetch_optional(&self.pool)
            .await;
            match held {
                Ok(Some(row)) => {
                    let id: String = row.try_get("transfer_id").unwrap_or_default();
                    return EngineError::Input(format!(
                        "{} is already the destination of unfinished transfer {id}: wait for it \
                         (`barge status {id}`) or stop it (`barge abort {id}`) first",
                        s.dst
                    ));
                }
                Ok(None) => continue,
                Err(e) => return self.err(e),
            }
        }
        EngineError::Input(
            "a destination is already being written by an unfinished transfer (see `barge list`)"
                .into(),
        )
    }

    /// The queue a transfer was submitted to, if it was submitted for workers.
    pub async fn submitted_queue(&self, transfer: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT t.queue AS queue, (SELECT COUNT(*) FROM barge_work w WHERE w.transfer_id = t.id) AS n \
             FROM barge_transfers t WHERE t.id = $1",
        )
        .bind(transfer)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let Some(row) = row else { return Ok(None) };
        let n: i64 = row.try_get("n").map_err(|e| self.err(e))?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(row.try_get("queue").map_err(|e| self.err(e))?))
    }

    /// Claim up to `n` ready tasks of a queue for `owner`, for `lease_ms`. Finalize tasks come
    /// first, then parts, then planning: work already started is finished before more starts.
    pub async fn claim(
        &self,
        owner: &str,
        queue: &str,
        n: usize,
        lease_ms: u64,
    ) -> Result<Vec<Task>> {
        self.claim_where(owner, queue, "", n, lease_ms).await
    }

    /// Claim up to `parts` part tasks and up to `files` file-level tasks (finalize, then plan:
    /// a stat and a small file's whole move, or an upload's start and end; round trips rather
    /// than bandwidth), as [`claim`](Self::claim) orders them.
    pub async fn claim_split(
        &self,
        owner: &str,
        queue: &str,
        parts: usize,
        files: usize,
        lease_ms: u64,
    ) -> Result<Vec<Task>> {
        let mut tasks = Vec::new();
        if files > 0 {
            tasks = self
                .claim_where(owner, queue, "AND kind <> 'part'", files, lease_ms)
                .await?;
        }
        if parts > 0 {
            match self
                .claim_where(owner, queue, "AND kind = 'part'", parts, lease_ms)
                .await
            {
                Ok(p) => tasks.extend(p),
                // The file-level tasks are leased already: they go on (an error here would
                // leave them leased, to no one's use, until their lease expires); parts are
                // claimed on the next round.
                Err(e) if !tasks.is_empty() => {
                    tracing::warn!("claiming parts failed: {e}; claiming them again next round")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(tasks)
    }

    /// `kinds`: a fixed SQL condition on `kind` (never user input), or empty.
    async fn claim_where(
        &self,
        owner: &str,
        queue: &str,
        kinds: &str,
        n: usize,
        lease_ms: u64,
    ) -> Result<Vec<Task>> {
        let now = self.now_ms();
        let skip = self.skip_locked();
        let sql = format!(
            "UPDATE barge_work SET state = 'leased', owner = $1, lease_until = {now} + $2, \
             attempts = attempts + 1 \
             WHERE (transfer_id, file_id, kind, number) IN ( \
               SELECT transfer_id, file_id, kind, number FROM barge_work \
               WHERE queue = $3 AND state = 'ready' {kinds} \
               ORDER BY kind, transfer_id, file_id, number LIMIT $4 {skip}) \
             RETURNING transfer_id, file_id, kind, number, attempts"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease_ms as i64)
            .bind(queue)
            .bind(n as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let mut tasks = rows
            .iter()
            .map(|r| self.task_row(r))
            .collect::<Result<Vec<_>>>()?;
        tasks.sort_by(|a, b| {
            (a.kind.as_str(), &a.transfer, a.file, a.number).cmp(&(
                b.kind.as_str(),
                &b.transfer,
                b.file,
                b.number,
            ))
        });
        Ok(tasks)
    }

    fn task_row(&self, r: &AnyRow) -> Result<Task> {
        let g = |e: sqlx::Error| self.err(e);
        Ok(Task {
            transfer: r.try_get("transfer_id").map_err(g)?,
            file: r.try_get::<i64, _>("file_id").map_err(g)? as FileId,
            kind: TaskKind::parse(&r.try_get::<String, _>("kind").map_err(g)?)?,
            number: r.try_get::<i64, _>("number").map_err(g)? as u32,
            claims: r.try_get::<i64, _>("attempts").map_err(g)? as u32,
        })
    }

    /// Extend `owner`'s leases on `tasks`, the tasks it is running. Returns how many it still
    /// held. Only those: a row leased to `owner` by a claim whose answer never arrived (the
    /// connection dropped after the commit) is not renewed, so its lease expires and any worker
    /// takes it up again, instead of staying leased to a worker that never runs it.
    pub async fn renew(&self, owner: &str, tasks: &[Task], lease_ms: u64) -> Result<u64> {
        let mut renewed = 0;
        for chunk in tasks.chunks(BATCH) {
            let mut which = String::new();
            for i in 0..chunk.len() {
                let n = 3 + 4 * i;
                if i > 0 {
                    which.push_str(" OR ");
                }
                which.push_str(&format!(
                    "(transfer_id = ${n} AND file_id = ${} AND kind = ${} AND number = ${})",
                    n + 1,
                    n + 2,
                    n + 3
                ));
            }
            let sql = format!(
                "UPDATE barge_work SET lease_until = {} + $1 \
                 WHERE owner = $2 AND state = 'leased' AND ({which})",
                self.now_ms()
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(lease_ms as i64)
                .bind(owner);
            for t in chunk {
                q = q
                    .bind(&t.transfer)
                    .bind(t.file as i64)
                    .bind(t.kind.as_str())
                    .bind(t.number as i64);
            }
            let r = q.execute(&self.pool).await.map_err(|e| self.err(e))?;
            renewed += r.rows_affected();
        }
        Ok(renewed)
    }

    /// Put back every task whose lease has expired (its worker died or lost the journal).
    /// Returns how many.
    pub async fn reclaim_expired(&self) -> Result<u64> {
        let sql = format!(
            "UPDATE barge_work SET state = 'ready', owner = NULL \
             WHERE state = 'leased' AND lease_until < {}",
            self.now_ms()
        );
        let r = sqlx::query(AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.rows_affected())
    }

    /// Give back every task `owner` holds (a worker stopping cleanly): others take them at once.
    pub async fn release(&self, owner: &str) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE barge_work SET state = 'ready', owner = NULL WHERE owner = $1 AND state = 'leased'",
        )
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(r.rows_affected())
    }

    /// Mark a task done if `owner` still holds it. False: the lease was lost to another worker.
    pub async fn task_done(&self, task: &Task, owner: &str) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(e))?;
        mark_done(self, &mut *conn, task, owner).await
    }

    /// A part's receipt, and its task marked done. Returns true when this was the file's last
    /// part: the file's finalize task is then queued (once, whoever gets here first).
    pub async fn part_recorded(
        &self,
        task: &Task,
        owner: &str,
        upload_id: &str,
        receipt: &PartReceipt,
        queue: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        // The receipt is kept even if the lease was lost: the bytes are the pinned source's, the
        // same whoever moved them, and finalize checks every receipt against the store anyway.
        self.record_receipt(&mut *tx, &task.transfer, task.file, upload_id, receipt)
            .await?;
        let owned = mark_done(self, &mut *tx, task, owner).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        if !owned {
            return Ok(false);
        }
        // Counted after the commit: of two workers finishing the last two parts at once, the
        // later one sees both done.
        let left: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM barge_work \
             WHERE transfer_id = $1 AND file_id = $2 AND kind = 'part' \
             AND state IN ('ready', 'leased') LIMIT 1) AS x",
        )
        .bind(&task.transfer)
        .bind(task.file as i64)
        .fetch_one(&self.pool)
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(|e| self.err(e))?;
        if left > 0 {
            return Ok(false);
        }
        let queued = sqlx::query(
            "INSERT INTO barge_work (transfer_id, file_id, kind, number, queue, state) \
             VALUES ($1, $2, 'finalize', 0, $3, 'ready') ON CONFLICT DO NOTHING",
        )
        .bind(&task.transfer)
        .bind(task.file as i64)
        .bind(queue)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(queued.rows_affected() == 1)
    }

    /// A planned multipart file: its upload id, one ready task for each of `parts` (its
    /// finalize task instead when none is left to move: an upload continued whose parts are all
    /// there), and its plan task done, in one transaction. False (nothing written): the plan
    /// task's lease was lost, and the caller must abort the upload it started.
    pub async fn start_parts(
        &self,
        task: &Task,
        owner: &str,
        upload_id: &str,
        parts: &[u32],
        queue: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        if !mark_done(self, &mut *tx, task, owner).await? {
            return Ok(false);
        }
        self.record_upload(&mut *tx, &task.transfer, task.file, upload_id)
            .await?;
        // Parts left from an earlier upload of this file (a re-plan) are replaced.
        sqlx::query(
            "DELETE FROM barge_work WHERE transfer_id = $1 AND file_id = $2 AND kind <> 'plan'",
        )
        .bind(&task.transfer)
        .bind(task.file as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        if parts.is_empty() {
            sqlx::query(
                "INSERT INTO barge_work (transfer_id, file_id, kind, number, queue, state) \
                 VALUES ($1, $2, 'finalize', 0, $3, 'ready')",
            )
            .bind(&task.transfer)
            .bind(task.file as i64)
            .bind(queue)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        let contiguous = parts.iter().enumerate().all(|(i, n)| *n as usize == i + 1);
        if contiguous && !parts.is_empty() {
            // Every part, 1 to n: one statement however many.
            sqlx::query(
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $1) \
                 INSERT INTO barge_work (transfer_id, file_id, kind, number, queue, state) \
                 SELECT $2, $3, 'part', x, $4, 'ready' FROM n",
            )
            .bind(parts.len() as i64)
            .bind(&task.transfer)
            .bind(task.file as i64)
            .bind(queue)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        for chunk in parts.chunks(BATCH).filter(|_| !contiguous) {
            let values = placeholders(chunk.len(), 5);
            let sql = format!(
                "INSERT INTO barge_work (transfer_id, file_id, kind, number, queue, state) \
                 SELECT v.*, 'ready' FROM (VALUES {values}) AS v"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for n in chunk {
                q = q
                    .bind(&task.transfer)
                    .bind(task.file as i64)
                    .bind("part")
                    .bind(i64::from(*n))
                    .bind(queue);
            }
            q.execute(&mut *tx).await.map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Finalize found parts whose bytes on the store are not what the journal recorded: move
    /// them again, and finalize again after them.
    pub async fn redo_parts(&self, task: &Task, numbers: &[u32]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        for n in numbers {
            sqlx::query(
                "UPDATE barge_work SET state = 'ready', owner = NULL, attempts = 0 \
                 WHERE transfer_id = $1 AND file_id = $2 AND kind = 'part' AND number = $3",
            )
            .bind(&task.transfer)
            .bind(task.file as i64)
            .bind(i64::from(*n))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        sqlx::query(
            "DELETE FROM barge_work WHERE transfer_id = $1 AND file_id = $2 AND kind = 'finalize'",
        )
        .bind(&task.transfer)
        .bind(task.file as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// One file's record.
    pub async fn file(&self, transfer: &str, file: FileId) -> Result<Option<FileRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM barge_files WHERE transfer_id = $1 AND file_id = $2",
            super::sql::FILE_COLS
        )))
        .bind(transfer)
        .bind(file as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        row.map(|r| self.file_row(&r)).transpose()
    }

    /// Close a transfer whose files are all finished: `done`, or `failed` if any file failed.
    /// Returns the state it was closed with, if it was.
    pub async fn settle(&self, transfer: &str) -> Result<Option<super::TransferState>> {
        let r = sqlx::query(
            "UPDATE barge_transfers SET updated_at = $1, state = CASE WHEN EXISTS \
               (SELECT 1 FROM barge_files f WHERE f.transfer_id = $2 AND f.state = 'failed') \
               THEN 'failed' ELSE 'done' END \
             WHERE id = $2 AND state = 'running' AND NOT EXISTS \
               (SELECT 1 FROM barge_files f WHERE f.transfer_id = $2 \
                AND f.state IN ('pending', 'planned', 'uploading'))",
        )
        .bind(now())
        .bind(transfer)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        Ok(self
            .transfer_state(transfer)
            .await?
            .filter(|s| *s != super::TransferState::Running))
    }

    pub async fn transfer_state(&self, transfer: &str) -> Result<Option<super::TransferState>> {
        let row = sqlx::query("SELECT state FROM barge_transfers WHERE id = $1")
            .bind(transfer)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| {
            super::TransferState::parse(&r.try_get::<String, _>("state").map_err(|e| self.err(e))?)
        })
        .transpose()
    }

    /// See [`WorkQueue::transfer_workers`].
    pub async fn transfer_workers(&self, transfer: &str) -> Result<u64> {
        let n: i64 = sqlx::query(
            "SELECT COUNT(DISTINCT owner) AS n FROM barge_work \
             WHERE transfer_id = $1 AND state = 'leased'",
        )
        .bind(transfer)
        .fetch_one(&self.pool)
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(|e| self.err(e))?;
        Ok(n.max(0) as u64)
    }

    /// See [`WorkQueue::part_demand`].
    pub async fn part_demand(&self, queue: &str, owner: &str) -> Result<PartDemand> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN state = 'ready' THEN 1 ELSE 0 END), 0) AS ready, \
             COUNT(DISTINCT CASE WHEN state = 'leased' AND owner <> $1 THEN owner END) AS others \
             FROM barge_work WHERE queue = $2 AND kind = 'part' AND state IN ('ready', 'leased')",
        )
        .bind(owner)
        .bind(queue)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let g = |e: sqlx::Error| self.err(e);
        let ready: i64 = row.try_get("ready").map_err(g)?;
        let others: i64 = row.try_get("others").map_err(g)?;
        Ok(PartDemand {
            ready: ready.max(0) as u64,
            other_workers: others.max(0) as u64,
        })
    }

    /// Whether a queue holds tasks not yet done (ready or leased): 0 means a worker has nothing
    /// left to wait for; otherwise 1.
    pub async fn unfinished_work(&self, queue: &str) -> Result<u64> {
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM barge_work \
             WHERE queue = $1 AND state IN ('ready', 'leased') LIMIT 1) AS x",
        )
        .bind(queue)
        .fetch_one(&self.pool)
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// `barge resume` of a submitted transfer: failed files are planned afresh (their uploads
    /// were aborted when they failed), and the transfer runs again.
    pub async fn requeue_failed(&self, transfer: &str, queue: &str) -> Result<u64> {
        // Three statements for the whole transfer, not three per file.
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query(
            "DELETE FROM barge_work WHERE transfer_id = $1 AND file_id IN \
             (SELECT file_id FROM barge_files WHERE transfer_id = $2 AND state = 'failed')",
        )
        .bind(transfer)
        .bind(transfer)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        sqlx::query(
            "INSERT INTO barge_work (transfer_id, file_id, kind, number, queue, state) \
             SELECT transfer_id, file_id, 'plan', 0, $1, 'ready' FROM barge_files \
             WHERE transfer_id = $2 AND state = 'failed'",
        )
        .bind(queue)
        .bind(transfer)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        let failed = sqlx::query(
            "UPDATE barge_files SET state = 'pending', upload_id = NULL, error = NULL \
             WHERE transfer_id = $1 AND state = 'failed'",
        )
        .bind(transfer)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?
        .rows_affected();
        sqlx::query("UPDATE barge_transfers SET state = 'running', updated_at = $1 WHERE id = $2")
            .bind(now())
            .bind(transfer)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(failed)
    }
}

async fn mark_done<'c, E>(j: &SqlJournal, conn: E, task: &Task, owner: &str) -> Result<bool>
where
    E: Executor<'c, Database = sqlx::Any>,
{
    let r = sqlx::query(
        "UPDATE barge_work SET state = 'done' \
         WHERE transfer_id = $1 AND file_id = $2 AND kind = $3 AND number = $4 \
         AND owner = $5 AND state = 'leased'",
    )
    .bind(&task.transfer)
    .bind(task.file as i64)
    .bind(task.kind.as_str())
    .bind(i64::from(task.number))
    .bind(owner)
    .execute(conn)
    .await
    .map_err(|e| j.err(e))?;
    Ok(r.rows_affected() == 1)
}

/// `($1, $2, $3), ($4, $5, $6)` for `rows` rows of `cols` values.
fn placeholders(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let vals: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", vals.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(placeholders(2, 2), "($1, $2), ($3, $4)");
    }
}
