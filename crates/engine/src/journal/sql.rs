//! The SQL journal: one schema and one set of queries for SQLite (an embedded file, the default)
//! and PostgreSQL (shared by many machines), through sqlx's runtime-chosen `Any` driver.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use barge_store::{ObjectAttrs, PartReceipt, Pin};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};

use super::{
    FileId, FileRecord, FileState, Journal, TransferRecord, TransferState, conn_to_str, location,
    now,
};
use crate::error::{EngineError, Result};
use crate::plan::{FilePlan, Strategy};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS barge_transfers (
        id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        state TEXT NOT NULL,
        spec TEXT NOT NULL,
        queue TEXT NOT NULL DEFAULT ''
    )",
    "CREATE INDEX IF NOT EXISTS barge_transfers_fingerprint ON barge_transfers (fingerprint)",
    "CREATE TABLE IF NOT EXISTS barge_files (
        transfer_id TEXT NOT NULL,
        file_id BIGINT NOT NULL,
        src_conn TEXT NOT NULL,
        src_bucket TEXT NOT NULL,
        src_key TEXT NOT NULL,
        dst_conn TEXT NOT NULL,
        dst_bucket TEXT NOT NULL,
        dst_key TEXT NOT NULL,
        size BIGINT NOT NULL,
        etag TEXT,
        version_id TEXT,
        attrs TEXT NOT NULL,
        strategy TEXT NOT NULL,
        part_size BIGINT NOT NULL,
        part_count BIGINT NOT NULL,
        upload_id TEXT,
        state TEXT NOT NULL,
        error TEXT,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (transfer_id, file_id)
    )",
    "CREATE TABLE IF NOT EXISTS barge_parts (
        transfer_id TEXT NOT NULL,
        file_id BIGINT NOT NULL,
        upload_id TEXT NOT NULL,
        number BIGINT NOT NULL,
        etag TEXT NOT NULL,
        len BIGINT NOT NULL,
        crc32c TEXT,
        PRIMARY KEY (transfer_id, file_id, upload_id, number)
    )",
    // Work for workers (see queue.rs): one row per file-level task ('plan', 'finalize', with
    // number 0) and per part ('part'), claimed under a lease.
    "CREATE TABLE IF NOT EXISTS barge_work (
        transfer_id TEXT NOT NULL,
        file_id BIGINT NOT NULL,
        kind TEXT NOT NULL,
        number BIGINT NOT NULL,
        queue TEXT NOT NULL,
        state TEXT NOT NULL,
        owner TEXT,
        lease_until BIGINT NOT NULL DEFAULT 0,
        attempts BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (transfer_id, file_id, kind, number)
    )",
    "CREATE INDEX IF NOT EXISTS barge_work_ready ON barge_work (queue, state, kind, transfer_id, file_id, number)",
    "CREATE INDEX IF NOT EXISTS barge_work_owner ON barge_work (owner, state)",
    "CREATE INDEX IF NOT EXISTS barge_work_file ON barge_work (transfer_id, file_id, kind, state)",
    "CREATE INDEX IF NOT EXISTS barge_files_state ON barge_files (transfer_id, state)",
    // Destinations of submitted transfers whose files are not finished: a second submission to
    // the same destination is refused by the primary key, race-free across machines.
    "CREATE TABLE IF NOT EXISTS barge_destinations (
        dst TEXT PRIMARY KEY,
        transfer_id TEXT NOT NULL,
        file_id BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS barge_destinations_file ON barge_destinations (transfer_id, file_id)",
];

/// The table or index a statement of [`SCHEMA`] creates (`CREATE TABLE|INDEX IF NOT EXISTS name`).
fn schema_object(stmt: &str) -> &str {
    stmt.split_whitespace().nth(5).unwrap_or_default()
}

const TRANSFER_COLS: &str = "id, fingerprint, created_at, updated_at, state, spec";
pub(super) const FILE_COLS: &str = "file_id, src_conn, src_bucket, src_key, dst_conn, dst_bucket, dst_key, \
     size, etag, version_id, attrs, strategy, part_size, part_count, upload_id, state, error";

pub struct SqlJournal {
    pub(super) pool: AnyPool,
    /// PostgreSQL (else SQLite): the few statements that differ ask this.
    pub(super) pg: bool,
    /// What to call it in messages: the file path, or the URL without its password.
    shown: String,
    /// The URL's password in each spelling, scrubbed from every message (never printed: the
    /// `Debug` below shows `shown` only).
    secrets: Vec<String>,
}

impl std::fmt::Debug for SqlJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqlJournal({})", self.shown)
    }
}

/// The default journal file: `$XDG_STATE_HOME/barge/journal.sqlite` (or the platform's equivalent).
pub fn default_path() -> PathBuf {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .unwrap_or_else(std::env::temp_dir)
        .join("barge")
        .join("journal.sqlite")
}

/// A PostgreSQL URL as messages show it: user, host, port and database. Never a password,
/// however it was written (userinfo, with `@` or `%40` in it, or a `password=` / `sslpassword=`
/// parameter), and no parameter at all. Read with the `url` crate, not the driver's parser,
/// which logs unknown parameters with their values.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let user = percent_encoding::percent_decode_str(u.username()).decode_utf8_lossy();
            let user = if user.is_empty() {
                String::new()
            } else {
                format!("{user}@")
            };
            format!(
                "postgres://{user}{}:{}{}",
                u.host_str().unwrap_or("localhost"),
                u.port().unwrap_or(5432),
                u.path()
            )
        }
        Err(_) => "postgres://(a URL barge cannot read)".into(),
    }
}

/// Every spelling of a password a PostgreSQL URL may carry (raw and percent-decoded, from the
/// userinfo whichever `@` ends it, and from any parameter whose name says password), for
/// scrubbing messages that might repeat one.
fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |v: &str| {
        for s in [
            v.to_string(),
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned(),
        ] {
            if !s.is_empty() && !out.contains(&s) {
                out.push(s);
            }
        }
    };
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    for (at, _) in rest.match_indices('@') {
        if let Some((_, pass)) = rest[..at].split_once(':') {
            add(pass);
        }
    }
    // Every '?' may start the query: a password may hold one itself.
    for (q, _) in rest.match_indices('?') {
        for pair in rest[q + 1..].split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && k.to_ascii_lowercase().contains("pass")
            {
                add(v);
            }
        }
    }
    // Longest first, so a password that contains another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// The parameters PostgreSQL's driver reads from a URL. It logs any other with its value (at
/// warning level), which for a parameter like `sslpassword` would print a secret.
const PG_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The URL handed to the driver: only the parameters it reads. Each one dropped is named (never
/// its value) in a warning.
fn driver_url(spec: &str) -> Result<String> {
    let mut url = url::Url::parse(spec).map_err(|e| {
        EngineError::Journal(format!(
            "the journal URL {} is not a PostgreSQL URL ({e}): write postgres://USER@HOST:PORT/DB",
            redact(spec)
        ))
    })?;
    type Pairs = Vec<(String, String)>;
    let (kept, dropped): (Pairs, Pairs) = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .partition(|(k, _)| PG_PARAMS.contains(&k.as_str()) || k.starts_with("options["));
    for (k, _) in &dropped {
        tracing::warn!("the journal URL's parameter '{k}' is not supported; ignored");
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(url.into())
}

/// `msg` with every secret replaced by `***`.
fn scrub(msg: String, secrets: &[String]) -> String {
    secrets.iter().fold(msg, |m, s| {
        if m.contains(s.as_str()) {
            m.replace(s.as_str(), "***")
        } else {
            m
        }
    })
}

impl SqlJournal {
    /// Open (creating if needed) a journal: a `postgres://` URL, or a SQLite file path. Fails with
    /// a clear message, before anything moves, when it cannot be written.
    pub async fn open(spec: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let is_pg = spec.starts_with("postgres://") || spec.starts_with("postgresql://");
        let secrets = if is_pg { url_secrets(spec) } else { Vec::new() };
        let (url, shown) = if is_pg {
            (driver_url(spec)?, redact(spec))
        } else {
            let path = Path::new(spec.strip_prefix("sqlite://").unwrap_or(spec));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    EngineError::Journal(format!(
                        "cannot create the journal folder {}: {e} (choose another with --journal PATH)",
                        dir.display()
                    ))
                })?;
            }
            (
                format!("sqlite://{}?mode=rwc", path.display()),
                path.display().to_string(),
            )
        };
        let sqlite = !is_pg;
        let pool = AnyPoolOptions::new()
            // SQLite has one writer: one connection serialises writes without busy errors.
            .max_connections(if sqlite { 1 } else { 8 })
            // Short on PostgreSQL: a worker whose server restarts waits in its own retry loop.
            .acquire_timeout(std::time::Duration::from_secs(if sqlite { 60 } else { 5 }))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA busy_timeout = 10000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| {
                EngineError::Journal(scrub(
                    format!(
                        "cannot open the journal {shown}: {e} (choose another with --journal PATH)"
                    ),
                    &secrets,
                ))
            })?;
        let j = Self {
            pool,
            pg: is_pg,
            shown,
            secrets,
        };
        // On PostgreSQL the schema is created only when some of it is missing: `CREATE INDEX IF
        // NOT EXISTS` takes a SHARE lock on its table even when the index exists, held to the end
        // of the transaction, so a process opening a journal that others are writing to would
        // wait for their transactions while they wait for it (a deadlock PostgreSQL breaks by
        // failing one of them).
        if !(is_pg && j.schema_complete().await?) {
            // One transaction, and on PostgreSQL under an advisory lock: `CREATE ... IF NOT
            // EXISTS` is not safe against itself, and many workers may start at once on a fresh
            // database.
            let mut tx = j.pool.begin().await.map_err(|e| j.err(e))?;
            if is_pg {
                sqlx::query("SELECT pg_advisory_xact_lock(4242420001)")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| j.err(e))?;
            }
            for stmt in SCHEMA {
                sqlx::query(*stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| j.err(e))?;
            }
            tx.commit().await.map_err(|e| j.err(e))?;
        }
        // Prove it is writable now, not after bytes have moved.
        let probe = format!("probe-{}", uuid::Uuid::new_v4().simple());
        sqlx::query(
            "INSERT INTO barge_transfers (id, fingerprint, created_at, updated_at, state, spec) \
             VALUES ($1, '', 0, 0, 'aborted', '')",
        )
        .bind(&probe)
        .execute(&j.pool)
        .await
        .map_err(|e| j.err(e))?;
        sqlx::query("DELETE FROM barge_transfers WHERE id = $1")
            .bind(&probe)
            .execute(&j.pool)
            .await
            .map_err(|e| j.err(e))?;
        Ok(j)
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether every table and index of the schema exists (PostgreSQL; without taking a lock).
    async fn schema_complete(&self) -> Result<bool> {
        let checks: Vec<String> = SCHEMA
            .iter()
            .map(|stmt| format!("to_regclass('{}') IS NOT NULL", schema_object(stmt)))
            .collect();
        let sql = format!(
            "SELECT CASE WHEN {} THEN 1 ELSE 0 END",
            checks.join(" AND ")
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let complete: i32 = row.try_get(0).map_err(|e| self.err(e))?;
        Ok(complete == 1)
    }

    /// A file's upload id, and the file marked uploading: on a connection or in a transaction.
    pub(super) async fn record_upload<'c, E>(
        &self,
        conn: E,
        transfer: &str,
        file: FileId,
        upload_id: &str,
    ) -> Result<()>
    where
        E: Executor<'c, Database = sqlx::Any>,
    {
        sqlx::query(
            "UPDATE barge_files SET upload_id = $1, state = 'uploading', error = NULL, updated_at = $2 \
             WHERE transfer_id = $3 AND file_id = $4",
        )
        .bind(upload_id)
        .bind(now())
        .bind(transfer)
        .bind(file as i64)
        .execute(conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A part's receipt (replacing an earlier one of the same upload and number): on a
    /// connection or in a transaction.
    pub(super) async fn record_receipt<'c, E>(
        &self,
        conn: E,
        transfer: &str,
        file: FileId,
        upload_id: &str,
        receipt: &PartReceipt,
    ) -> Result<()>
    where
        E: Executor<'c, Database = sqlx::Any>,
    {
        sqlx::query(
            "INSERT INTO barge_parts (transfer_id, file_id, upload_id, number, etag, len, crc32c) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (transfer_id, file_id, upload_id, number) DO UPDATE SET \
             etag = excluded.etag, len = excluded.len, crc32c = excluded.crc32c",
        )
        .bind(transfer)
        .bind(file as i64)
        .bind(upload_id)
        .bind(i64::from(receipt.number))
        .bind(&receipt.etag)
        .bind(receipt.len as i64)
        .bind(receipt.crc32c.clone())
        .execute(conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) fn err(&self, e: sqlx::Error) -> EngineError {
        let msg = scrub(format!("journal {}: {e}", self.shown), &self.secrets);
        if unavailable(&e) {
            EngineError::JournalUnavailable(msg)
        } else {
            EngineError::Journal(msg)
        }
    }

    fn transfer_row(&self, r: &AnyRow) -> Result<TransferRecord> {
        let g = |e: sqlx::Error| self.err(e);
        Ok(TransferRecord {
            id: r.try_get("id").map_err(g)?,
            fingerprint: r.try_get("fingerprint").map_err(g)?,
            created_at: r.try_get("created_at").map_err(g)?,
            updated_at: r.try_get("updated_at").map_err(g)?,
            state: TransferState::parse(&r.try_get::<String, _>("state").map_err(g)?)?,
            spec: r.try_get("spec").map_err(g)?,
        })
    }

    pub(super) fn file_row(&self, r: &AnyRow) -> Result<FileRecord> {
        let g = |e: sqlx::Error| self.err(e);
        let s = |name: &str| -> Result<String> { r.try_get::<String, _>(name).map_err(g) };
        let o = |name: &str| -> Result<Option<String>> {
            r.try_get::<Option<String>, _>(name).map_err(g)
        };
        let i = |name: &str| -> Result<i64> { r.try_get::<i64, _>(name).map_err(g) };
        let attrs: ObjectAttrs = serde_json::from_str(&s("attrs")?)
            .map_err(|e| EngineError::Journal(format!("journal {}: attrs: {e}", self.shown)))?;
        let plan = FilePlan {
            id: i("file_id")? as usize,
            src: location(&s("src_conn")?, s("src_bucket")?, s("src_key")?),
            dst: location(&s("dst_conn")?, s("dst_bucket")?, s("dst_key")?),
            size: i("size")? as u64,
            pin: Pin {
                etag: o("etag")?,
                version_id: o("version_id")?,
            },
            attrs,
            strategy: Strategy::parse(&s("strategy")?)?,
            part_size: i("part_size")? as u64,
            part_count: i("part_count")? as u32,
            attrs_pending: false,
        };
        Ok(FileRecord {
            plan,
            upload_id: o("upload_id")?,
            state: FileState::parse(&s("state")?)?,
            error: o("error")?,
        })
    }
}

#[async_trait]
impl Journal for SqlJournal {
    fn durable(&self) -> bool {
        true
    }

    async fn fail_unfinished(&self, transfer: &str, error: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query(
            "UPDATE barge_files SET state = 'failed', error = $1, updated_at = $2 \
             WHERE transfer_id = $3 AND state IN ('pending', 'planned', 'uploading')",
        )
        .bind(error)
        .bind(now())
        .bind(transfer)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        sqlx::query(
            "UPDATE barge_work SET state = 'failed', owner = NULL \
             WHERE transfer_id = $1 AND state IN ('ready', 'leased')",
        )
        .bind(transfer)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        sqlx::query("DELETE FROM barge_destinations WHERE transfer_id = $1")
            .bind(transfer)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn find_resumable(&self, fingerprint: &str) -> Result<Option<TransferRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TRANSFER_COLS} FROM barge_transfers \
             WHERE fingerprint = $1 AND state IN ('running', 'interrupted', 'failed') \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        )))
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        row.map(|r| self.transfer_row(&r)).transpose()
    }

    async fn create_transfer(&self, t: &TransferRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO barge_transfers (id, fingerprint, created_at, updated_at, state, spec) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.id)
        .bind(&t.fingerprint)
        .bind(t.created_at)
        .bind(t.updated_at)
        .bind(t.state.as_str())
        .bind(&t.spec)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn transfer(&self, id: &str) -> Result<Option<TransferRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TRANSFER_COLS} FROM barge_transfers WHERE id LIKE $1 ORDER BY id LIMIT 2"
        )))
        .bind(format!("{}%", id.replace(['%', '_'], "")))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        if rows.len() == 1 {
            Ok(Some(self.transfer_row(&rows[0])?))
        } else {
            Ok(None)
        }
    }

    async fn list_transfers(&self, limit: usize) -> Result<Vec<TransferRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TRANSFER_COLS} FROM barge_transfers WHERE state <> 'aborted' OR spec <> '' \
             ORDER BY created_at DESC, id DESC LIMIT $1"
        )))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.transfer_row(r)).collect()
    }

    async fn set_transfer_state(&self, id: &str, state: TransferState) -> Result<()> {
        sqlx::query("UPDATE barge_transfers SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn save_plans(&self, transfer: &str, plans: &[FilePlan]) -> Result<()> {
        // Several rows per statement: a listing of thousands of small files costs a sixteenth of
        // the round trips to the database (or to sqlx's SQLite thread). Not more: sqlx's SQLite
        // binding looks each parameter up by name, a cost that grows with the square of a
        // statement's parameters (at 64 rows, 2.6% of a small-object run's CPU).
        const ROWS: usize = 16;
        const PARAMS: usize = 16;
        let updated_at = now();
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        // The statement for `rows` rows: built once for the full chunks, once for a short last one.
        let statement = |rows: usize| {
            let values = (0..rows)
                .map(|r| {
                    let n = |i: usize| format!("${}", r * PARAMS + i);
                    let first: Vec<String> = (1..=14).map(n).collect();
                    format!(
                        "({}, NULL, 'planned', NULL, {}, {})",
                        first.join(", "),
                        n(15),
                        n(16)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "INSERT INTO barge_files ({FILE_COLS}, transfer_id, updated_at) VALUES {values} \
                 ON CONFLICT (transfer_id, file_id) DO UPDATE SET \
                 src_conn = excluded.src_conn, src_bucket = excluded.src_bucket, src_key = excluded.src_key, \
                 dst_conn = excluded.dst_conn, dst_bucket = excluded.dst_bucket, dst_key = excluded.dst_key, \
                 size = excluded.size, etag = excluded.etag, version_id = excluded.version_id, \
                 attrs = excluded.attrs, strategy = excluded.strategy, part_size = excluded.part_size, \
                 part_count = excluded.part_count, upload_id = NULL, state = 'planned', error = NULL, \
                 updated_at = excluded.updated_at"
            )
        };
        let full = statement(ROWS);
        for chunk in plans.chunks(ROWS) {
            let short;
            let sql = if chunk.len() == ROWS {
                &full
            } else {
                short = statement(chunk.len());
                &short
            };
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            for p in chunk {
                let attrs = serde_json::to_string(&p.attrs)
                    .map_err(|e| EngineError::Journal(format!("attrs: {e}")))?;
                q = q
                    .bind(p.id as i64)
                    .bind(conn_to_str(&p.src.conn))
                    .bind(&p.src.path.bucket)
                    .bind(&p.src.path.key)
                    .bind(conn_to_str(&p.dst.conn))
                    .bind(&p.dst.path.bucket)
                    .bind(&p.dst.path.key)
                    .bind(p.size as i64)
                    .bind(p.pin.etag.clone())
                    .bind(p.pin.version_id.clone())
                    .bind(attrs)
                    .bind(p.strategy.as_str())
                    .bind(p.part_size as i64)
                    .bind(i64::from(p.part_count))
                    .bind(transfer)
                    .bind(updated_at);
            }
            q.execute(&mut *tx).await.map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn files(&self, transfer: &str) -> Result<Vec<FileRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {FILE_COLS} FROM barge_files WHERE transfer_id = $1 ORDER BY file_id"
        )))
        .bind(transfer)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.file_row(r)).collect()
    }

    async fn upload_started(&self, transfer: &str, file: FileId, upload_id: &str) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(e))?;
        self.record_upload(&mut *conn, transfer, file, upload_id)
            .await
    }

    async fn part_done(
        &self,
        transfer: &str,
        file: FileId,
        upload_id: &str,
        receipt: &PartReceipt,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(e))?;
        self.record_receipt(&mut *conn, transfer, file, upload_id, receipt)
            .await
    }

    async fn receipts(
        &self,
        transfer: &str,
        file: FileId,
        upload_id: &str,
    ) -> Result<Vec<PartReceipt>> {
        let rows = sqlx::query(
            "SELECT number, etag, len, crc32c FROM barge_parts \
             WHERE transfer_id = $1 AND file_id = $2 AND upload_id = $3 ORDER BY number",
        )
        .bind(transfer)
        .bind(file as i64)
        .bind(upload_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                let g = |e: sqlx::Error| self.err(e);
                Ok(PartReceipt {
                    number: r.try_get::<i64, _>("number").map_err(g)? as u32,
                    etag: r.try_get("etag").map_err(g)?,
                    len: r.try_get::<i64, _>("len").map_err(g)? as u64,
                    crc32c: r.try_get("crc32c").map_err(g)?,
                })
            })
            .collect()
    }

    async fn files_completed(&self, transfer: &str, files: &[FileId]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let now = now();
        // Ids are bound, in lists padded (with the last id again) to a power of two: a handful
        // of statement texts, each prepared once and then served from the statement cache.
        for chunk in files.chunks(512) {
            let n = chunk.len().next_power_of_two();
            let padded = || (0..n).map(|i| chunk[i.min(chunk.len() - 1)] as i64);
            let list = |first: usize| {
                (first..first + n)
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let mut update = sqlx::query(AssertSqlSafe(format!(
                "UPDATE barge_files SET state = $1, error = NULL, updated_at = $2 \
                 WHERE transfer_id = $3 AND file_id IN ({})",
                list(4)
            )))
            .bind(FileState::Completed.as_str())
            .bind(now)
            .bind(transfer);
            for id in padded() {
                update = update.bind(id);
            }
            update.execute(&mut *tx).await.map_err(|e| self.err(e))?;
            // Finished files free their destinations.
            let mut free = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM barge_destinations WHERE transfer_id = $1 AND file_id IN ({})",
                list(2)
            )))
            .bind(transfer);
            for id in padded() {
                free = free.bind(id);
            }
            free.execute(&mut *tx).await.map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn file_state(
        &self,
        transfer: &str,
        file: FileId,
        state: FileState,
        error: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query(
            "UPDATE barge_files SET state = $1, error = $2, updated_at = $3 \
             WHERE transfer_id = $4 AND file_id = $5",
        )
        .bind(state.as_str())
        .bind(error.map(str::to_string))
        .bind(now())
        .bind(transfer)
        .bind(file as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        if matches!(state, FileState::Completed | FileState::Failed) {
            // A finished file frees its destination and leaves no work for workers.
            sqlx::query("DELETE FROM barge_destinations WHERE transfer_id = $1 AND file_id = $2")
                .bind(transfer)
                .bind(file as i64)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        if state == FileState::Failed {
            sqlx::query(
                "UPDATE barge_work SET state = 'failed', owner = NULL \
                 WHERE transfer_id = $1 AND file_id = $2 AND state IN ('ready', 'leased')",
            )
            .bind(transfer)
            .bind(file as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// Errors that say "not now" (the server cannot be reached, or the statement lost a conflict with
/// another worker's), not "this statement is wrong".
fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // PostgreSQL: 08 connection exception, 57P admin shutdown / cannot connect now,
            // 53 insufficient resources, 40 transaction rollback (a deadlock between workers'
            // lease updates, a serialization failure): worth trying again.
            // SQLite: 5 busy, 6 locked.
            c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || c.starts_with("40")
                || c == "5"
                || c == "6"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_statement_names_what_it_creates() {
        for stmt in SCHEMA {
            let words: Vec<&str> = stmt.split_whitespace().take(5).collect();
            assert!(
                matches!(
                    words[..],
                    ["CREATE", "TABLE" | "INDEX", "IF", "NOT", "EXISTS"]
                ),
                "{stmt}"
            );
            let name = schema_object(stmt);
            assert!(
                name.starts_with("barge_")
                    && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{stmt}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        for (url, secret) in [
            ("postgres://barge:hunter2@db:5432/j", "hunter2"),
            ("postgres://u:p@ss@db/j", "p@ss"),
            ("postgres://u:p%40ss@db/j", "p@ss"),
            (
                "postgresql://barge@db/j?password=s3cr3t&sslmode=disable",
                "s3cr3t",
            ),
            ("postgres://barge@db/j?sslpassword=k3yp4ss", "k3yp4ss"),
            ("postgres://barge@db/j?password=a%26b%3Fc", "a&b?c"),
        ] {
            let shown = redact(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
            assert!(
                shown.starts_with("postgres://") && shown.contains("@db:"),
                "{shown}"
            );
            let secrets = url_secrets(url);
            let msg = scrub(format!("failed at {url}, password {secret}"), &secrets);
            assert!(!msg.contains(secret), "{url}: {msg}");
            assert!(!msg.contains(&secret.replace('@', "%40")), "{url}: {msg}");
        }
        assert_eq!(
            redact("postgres://barge:x@db:5432/j"),
            "postgres://barge@db:5432/j"
        );
        assert_eq!(redact("postgres://db/j"), "postgres://db:5432/j");
    }

    /// Completions of any count (padded id lists, lists over one statement's 512) mark exactly
    /// the files named, and no others.
    #[tokio::test]
    async fn files_completed_marks_exactly_the_named_files() {
        let dir = std::env::temp_dir().join(format!("barge-jtest-{}", std::process::id()));
        let j = SqlJournal::open(&dir.join("j.sqlite").display().to_string())
            .await
            .expect("open");
        let plans = super::super::sample_plans(700);
        j.save_plans("t", &plans).await.expect("plans");
        // 3 ids (padded to 4), then 600 (a full 512 and 88 padded to 128).
        let first = [5, 9, 11];
        let second: Vec<FileId> = (100..700).collect();
        j.files_completed("t", &first).await.expect("three");
        j.files_completed("t", &second).await.expect("six hundred");
        let files = j.files("t").await.expect("files");
        std::fs::remove_dir_all(&dir).ok();
        let done: Vec<FileId> = files
            .iter()
            .filter(|f| f.state == FileState::Completed)
            .map(|f| f.plan.id)
            .collect();
        let want: Vec<FileId> = first.iter().copied().chain(100..700).collect();
        assert_eq!(done, want);
    }
}
