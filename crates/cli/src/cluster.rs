//! Many machines, one journal: `barge submit`, `barge worker`, and `cp`/`run`/`resume` with a
//! shared (PostgreSQL) journal, which submit and then work alongside any other workers.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use barge_engine::EngineError;
use barge_engine::cluster::{SubmitOptions, Until, Worker, WorkerOptions, submit, summary};
use barge_engine::connections::Connections;
use barge_engine::input::TransferSpec;
use barge_engine::journal::{Journal, SqlJournal, TransferState};
use barge_engine::report::Observer;
use barge_engine::run::fingerprint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::args::{Common, WorkerArgs, parse_duration};
use crate::progress::Progress;
use crate::{EXIT_FAILED, EXIT_INTERRUPTED, print_summary};

/// `barge submit`: record the transfer, print its id, return at once.
pub async fn submit_cmd(
    conns: &Connections,
    journal: &SqlJournal,
    specs: Vec<TransferSpec>,
    opts: SubmitOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let n = specs.len();
    // The same files submitted again to the same queue while their transfer is unfinished (a
    // retried Airflow task, a rerun script): that transfer, its failed files planned again,
    // rather than a second transfer moving everything once more.
    let earlier = match journal.find_resumable(&fingerprint(&specs)).await? {
        Some(t) if journal.submitted_queue(&t.id).await?.as_deref() == Some(&opts.queue) => {
            let again = journal.requeue_failed(&t.id, &opts.queue).await?;
            eprintln!(
                "transfer {} holds these files already; {again} failed file(s) planned again",
                t.id
            );
            Some(t.id)
        }
        _ => None,
    };
    let resumed = earlier.is_some();
    let id = match earlier {
        Some(id) => id,
        None => submit(conns, journal, specs, &opts).await?,
    };
    if json {
        out!(
            "{}",
            serde_json::json!({ "transfer_id": id, "files": n, "resumed": resumed })
        );
    } else {
        out!("{id}");
        eprintln!(
            "submitted transfer {id}: {n} file(s) on queue '{}'; `barge worker --queue {}` works on it, `barge status {id}` follows it",
            opts.queue, opts.queue
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn worker_options(a: &WorkerArgs) -> anyhow::Result<WorkerOptions> {
    crate::args::counts(a.concurrency, a.files, a.retries)?;
    let lease = parse_duration("--lease", &a.lease)?;
    if lease < Duration::from_secs(1) || lease > Duration::from_secs(86_400) {
        return Err(EngineError::Input(format!(
            "--lease {} is out of range: use 1s to 24h (shorter cannot be renewed in time; longer holds a dead worker's parts for too long)",
            a.lease
        ))
        .into());
    }
    let mut opts = WorkerOptions {
        queue: a.queue.clone(),
        concurrency: a.concurrency,
        files: a.files,
        max_memory: crate::args::max_memory(&a.max_memory)?,
        lease,
        journal_wait: parse_duration("--journal-wait", &a.journal_wait)?,
        allow_local: a.allow_local,
        bwlimit: crate::args::bwlimit(a.bwlimit.as_deref())?,
        ..WorkerOptions::default()
    };
    if let Some(id) = &a.id {
        opts.id = id.clone();
    }
    opts.retry.max_attempts = a.retries;
    Ok(opts)
}

/// `barge worker`: work until Ctrl-C / SIGTERM (or, with --exit-when-idle, until the queue is
/// empty).
pub async fn worker_cmd(
    conns: Arc<Connections>,
    journal: Arc<SqlJournal>,
    a: WorkerArgs,
) -> anyhow::Result<ExitCode> {
    let opts = worker_options(&a)?;
    let queue = opts.queue.clone();
    let worker = Arc::new(Worker::new(conns, journal.clone(), opts));
    if let Some(addr) = &a.metrics_addr {
        serve_metrics(addr, worker.clone()).await?;
    }
    let stop = CancellationToken::new();
    stop_on_signals(stop.clone(), "worker");
    eprintln!(
        "barge worker {} on queue '{queue}', journal {}",
        worker.id(),
        journal.shown()
    );
    let until = if a.exit_when_idle {
        Until::Idle
    } else {
        Until::Stopped
    };
    worker.run(stop.clone(), until).await?;
    Ok(if stop.is_cancelled() {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Ctrl-C or SIGTERM: stop claiming, finish what is in flight; a second one exits at once.
fn stop_on_signals(stop: CancellationToken, what: &'static str) {
    tokio::spawn(async move {
        if wait_signal().await {
            eprintln!(
                "barge {what}: stopping: finishing the parts in flight, giving back the rest (again to quit at once)"
            );
            stop.cancel();
            if wait_signal().await {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
        }
    });
}

async fn wait_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return tokio::signal::ctrl_c().await.is_ok();
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            _ = term.recv() => true,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

/// Prometheus metrics over plain HTTP: every request gets the current text exposition.
async fn serve_metrics(addr: &str, worker: Arc<Worker>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        EngineError::Input(format!("--metrics-addr {addr}: cannot listen there: {e}"))
    })?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let worker = worker.clone();
            tokio::spawn(async move {
                // Read the request head (its content does not matter), then answer.
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 16 * 1024 {
                    match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let body = worker.metrics.render(worker.retries(), worker.throttled());
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(())
}

/// `cp`/`run` with a shared journal: submit (or rejoin the unfinished run of the same command),
/// then work on it here until it is finished; other workers may join meanwhile.
pub async fn run_shared(
    conns: Arc<Connections>,
    journal: Arc<SqlJournal>,
    specs: Vec<TransferSpec>,
    skipped: Vec<barge_store::SkippedEntry>,
    common: &Common,
) -> anyhow::Result<ExitCode> {
    let fp = fingerprint(&specs);
    let earlier = journal.find_resumable(&fp).await?;
    let (tid, resumed) = match earlier {
        Some(t) => match journal.submitted_queue(&t.id).await? {
            Some(queue) => {
                journal.requeue_failed(&t.id, &queue).await?;
                (t.id, true)
            }
            None => (submit_from(&conns, &journal, specs, common).await?, false),
        },
        None => (submit_from(&conns, &journal, specs, common).await?, false),
    };
    work_on(conns, journal, &tid, resumed, skipped, common).await
}

async fn submit_from(
    conns: &Connections,
    journal: &SqlJournal,
    specs: Vec<TransferSpec>,
    common: &Common,
) -> anyhow::Result<String> {
    let opts = common.run_options()?;
    Ok(submit(
        conns,
        journal,
        specs,
        &SubmitOptions {
            queue: "default".into(),
            delete_source: common.delete_source,
            part_size: Some(opts.plan.part_size),
            copy_part_size: Some(opts.plan.copy_part_size),
            bwlimit: opts.bwlimit,
        },
    )
    .await?)
}

/// `barge resume ID` of a submitted transfer: its failed files go back to work, and this
/// process works on it until it is finished.
pub async fn resume_shared(
    conns: Arc<Connections>,
    journal: Arc<SqlJournal>,
    tid: &str,
    queue: &str,
    common: &Common,
) -> anyhow::Result<ExitCode> {
    let n = journal.requeue_failed(tid, queue).await?;
    if n > 0 && !common.quiet {
        eprintln!("transfer {tid}: {n} failed file(s) planned again");
    }
    work_on(conns, journal, tid, true, Vec::new(), common).await
}

/// Work on one transfer here until it is finished, showing its progress from the journal
/// (which counts every worker's parts, not only this one's).
async fn work_on(
    conns: Arc<Connections>,
    journal: Arc<SqlJournal>,
    tid: &str,
    resumed: bool,
    skipped: Vec<barge_store::SkippedEntry>,
    common: &Common,
) -> anyhow::Result<ExitCode> {
    let opts = common.run_options()?;
    let queue = journal
        .submitted_queue(tid)
        .await?
        .unwrap_or_else(|| "default".into());
    let started = Instant::now();
    let worker = Arc::new(Worker::new(
        conns,
        journal.clone(),
        WorkerOptions {
            queue,
            concurrency: opts.concurrency,
            files: opts.files,
            max_memory: opts.plan.max_memory,
            retry: opts.retry.clone(),
            bwlimit: opts.bwlimit,
            ..WorkerOptions::default()
        },
    ));
    let progress = Arc::new(Progress::new(common.quiet));
    progress.transfer_started(tid, resumed);
    let stop = CancellationToken::new();
    stop_on_signals(stop.clone(), "run");
    let poll_done = CancellationToken::new();
    let poller = tokio::spawn(poll_progress(
        journal.clone(),
        tid.to_string(),
        progress.clone(),
        poll_done.clone(),
    ));
    let result = worker
        .run(stop.clone(), Until::Settled(tid.to_string()))
        .await;
    poll_done.cancel();
    let _ = poller.await;
    result?;
    let mut s = summary(&journal, tid, started.elapsed(), worker.retries())
        .await?
        .with_skipped(skipped);
    // What passed through this process (other workers count their own).
    s.bytes_through_client = worker.metrics.bytes_moved.get();
    s.throttled = worker.throttled();
    for f in &s.files {
        progress.file_finished(f);
    }
    progress.finish();
    let interrupted = stop.is_cancelled()
        && matches!(
            journal.transfer_state(tid).await?,
            Some(TransferState::Running)
        );
    if interrupted {
        eprintln!(
            "barge: transfer {tid} goes on with any other worker; `barge resume {tid}` works on it here again"
        );
    }
    if common.json {
        out!("{}", serde_json::to_string_pretty(&s)?);
    } else if !common.quiet {
        print_summary(&s);
    }
    Ok(if interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if s.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

async fn poll_progress(
    journal: Arc<SqlJournal>,
    tid: String,
    progress: Arc<Progress>,
    done: CancellationToken,
) {
    let mut shown = std::collections::HashMap::new();
    loop {
        if let Ok(files) = journal.status(&tid).await {
            progress.set_total(files.iter().map(|f| f.size).sum());
            for f in &files {
                let before = shown.insert(f.id, f.bytes_done).unwrap_or(0);
                if f.bytes_done > before {
                    progress.progress(f.id, f.bytes_done - before);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = done.cancelled() => return,
        }
    }
}
