//! The `barge` command: a thin layer over the engine. Flags become a validated configuration,
//! the engine does the work, this file prints the result and picks the exit status.

/// `println!` that ends the process quietly when standard output is closed (`barge list | head`)
/// instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(141);
            }
            eprintln!("barge: cannot write to standard output: {e}");
        }
    }};
}

mod args;
mod cluster;
mod progress;
mod sync;

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use barge_engine::EngineError;
use barge_engine::connections::{ConfigFile, Connections};
use barge_engine::input::{
    Filters, ManifestFormat, TransferSpec, list_prefix, parse_manifest, single,
};
use barge_engine::journal::{Journal, MemoryJournal, SqlJournal, TransferState};
use barge_engine::location::Location;
use barge_engine::report::Summary;
use barge_engine::run::{Engine, TransferRequest, abort_transfer, cleanup};
use barge_engine::size::human;
use clap::Parser;

use args::{
    AbortArgs, CleanupArgs, Cli, Command, Common, CpArgs, DebugCommand, ListArgs, ResumeArgs,
    RunArgs, StatusArgs, SubmitArgs, VerifyArgs, parse_age,
};
use progress::{Progress, print_plan};

/// Exit statuses: 0 every file moved and verified; 1 some file failed; 2 the run was refused
/// (bad input, nothing moved); 130 interrupted.
const EXIT_FAILED: u8 = 1;
const EXIT_REFUSED: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let rt = match runtime(cli.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("barge: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("barge: {e:#}");
            let refused = e.downcast_ref::<EngineError>().is_some_and(|e| {
                matches!(
                    e,
                    EngineError::Input(_) | EngineError::Config { .. } | EngineError::Journal(_)
                )
            });
            ExitCode::from(if refused { EXIT_REFUSED } else { EXIT_FAILED })
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,sqlx=error",
        1 => "info,aws=warn,hyper=warn,sqlx=warn",
        _ => "debug,aws=info,hyper=info,h2=info,rustls=info,sqlx=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BARGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// The async runtime that drives every request. On small machines one thread: each request
/// then stays on the thread that sent it, where a multi-threaded runtime hands it to another
/// thread and back (measured on 2 cores: 15-30% less client CPU, as fast or faster, in every
/// benchmark scenario). Disk I/O runs on the blocking pool either way.
fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let n = threads.map(usize::from).unwrap_or_else(|| {
        match std::thread::available_parallelism().map(usize::from) {
            Ok(cores) if cores > 4 => cores,
            _ => 1,
        }
    });
    if n <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let (file, _) = ConfigFile::load(cli.config.as_deref())?;
    let write = match &cli.command {
        Command::Cp(a) => a.common.write_options()?,
        Command::Run(a) => a.common.write_options()?,
        Command::Sync(a) => a.common.write_options()?,
        Command::Resume(a) => a.common.write_options()?,
        _ => Default::default(),
    };
    let conns = Arc::new(Connections::new(file).with_write_options(write));
    let journal = JournalArg(cli.journal);
    match cli.command {
        Command::Cp(a) => cp(conns, journal, a).await,
        Command::Run(a) => run_manifest(conns, journal, a).await,
        Command::Sync(a) => sync::sync_cmd(conns, journal, a).await,
        Command::Cleanup(a) => cleanup_cmd(conns, a).await,
        Command::Status(a) => status(journal, a).await,
        Command::List(a) => list(journal, a).await,
        Command::Resume(a) => resume(conns, journal, a).await,
        Command::Abort(a) => abort(conns, journal, a).await,
        Command::Verify(a) => verify(conns, a).await,
        Command::Submit(a) => submit(conns, journal, a).await,
        Command::Worker(a) => {
            let j = journal.open_sql().await?;
            cluster::worker_cmd(conns, j, a).await
        }
        Command::Debug(d) => debug(conns, d).await,
    }
}

/// Where the journal is: `--journal`, else `$BARGE_JOURNAL`, else the default file.
struct JournalArg(Option<String>);

impl JournalArg {
    fn spec(&self) -> String {
        self.0
            .clone()
            .or_else(|| {
                std::env::var("BARGE_JOURNAL")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| {
                barge_engine::journal::sql::default_path()
                    .to_string_lossy()
                    .into_owned()
            })
    }

    async fn open(&self) -> anyhow::Result<Arc<dyn Journal>> {
        let spec = self.spec();
        if spec == "none" {
            return Ok(Arc::new(MemoryJournal::default()));
        }
        Ok(Arc::new(SqlJournal::open(&spec).await?))
    }

    /// A shared journal is a postgres:// URL.
    fn is_shared(&self) -> bool {
        let s = self.spec();
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    }

    /// The SQL journal itself, for submitting and working (not `none`).
    async fn open_sql(&self) -> anyhow::Result<Arc<SqlJournal>> {
        let spec = self.spec();
        if spec == "none" {
            return Err(EngineError::Input(
                "--journal none keeps no record for workers to share: give --journal postgres://...".into(),
            )
            .into());
        }
        Ok(Arc::new(SqlJournal::open(&spec).await?))
    }

    /// For commands that only read: a missing journal file is "no transfers", not an error.
    async fn open_existing(&self) -> anyhow::Result<Arc<dyn Journal>> {
        let spec = self.spec();
        if spec == "none" {
            return Err(EngineError::Input(
                "--journal none keeps no record: there is nothing to show".into(),
            )
            .into());
        }
        if !spec.contains("://") && !std::path::Path::new(&spec).exists() {
            return Err(EngineError::Input(format!(
                "no journal at {spec}: no transfer has run with it yet"
            ))
            .into());
        }
        self.open().await
    }
}

fn parse_loc(conns: &Connections, s: &str) -> anyhow::Result<Location> {
    Ok(Location::parse(s, &|n| conns.is_configured(n))?)
}

type Listing = barge_engine::input::Listed;

/// What `cp` and `submit` are asked to copy.
struct CpRequest<'a> {
    src: &'a str,
    dst: &'a str,
    recursive: bool,
    include: &'a [String],
    exclude: &'a [String],
    delete_source: bool,
}

/// The files `SRC DST` (with -r: every object under SRC) names.
async fn cp_specs(
    conns: &Connections,
    r: CpRequest<'_>,
) -> anyhow::Result<(Vec<TransferSpec>, Listing)> {
    let CpRequest {
        src,
        dst,
        recursive,
        include,
        exclude,
        delete_source,
    } = r;
    let typed = (src, dst);
    let src = parse_loc(conns, src)?;
    let dst = parse_loc(conns, dst)?;
    if !recursive && (!include.is_empty() || !exclude.is_empty()) {
        return Err(EngineError::Input("--include and --exclude go with -r".into()).into());
    }
    if recursive && delete_source {
        let pair = [TransferSpec {
            src: src.clone(),
            dst: dst.clone(),
        }];
        let resolver = barge_engine::identity::Resolver::new(conns, &pair).await;
        barge_engine::identity::check_tree(&resolver, &src, &dst)?;
    }
    Ok(if recursive {
        let filters = Filters::new(include, exclude)?;
        let store = conns.get(&src.conn).await?;
        let listing = list_prefix(&src, &dst, store.as_ref(), &filters).await?;
        if listing.files.is_empty() {
            let skipped = match listing.skipped.len() {
                0 => String::new(),
                n => format!(
                    " ({n} entries passed over, like {}: {})",
                    listing.skipped[0].path, listing.skipped[0].reason
                ),
            };
            return Err(EngineError::Input(format!(
                "nothing to copy: no object under {src} matches{skipped}"
            ))
            .into());
        }
        (
            listing.files.iter().map(|(s, _)| s.clone()).collect(),
            listing,
        )
    } else {
        if src.path.key.is_empty() || src.path.key.ends_with('/') {
            return Err(EngineError::Input(format!(
                "{src} is a prefix, not an object: add -r to copy everything under it"
            ))
            .into());
        }
        let spec = single(src, dst);
        // Named as typed: the engine's own refusal would show both spellings resolved alike.
        let resolver =
            barge_engine::identity::Resolver::new(conns, std::slice::from_ref(&spec)).await;
        if resolver.id(&spec.src) == resolver.id(&spec.dst) {
            return Err(EngineError::Input(format!(
                "'{}' is the source '{}' itself (both are {}): nothing was moved",
                typed.1, typed.0, spec.src
            ))
            .into());
        }
        (vec![spec], Listing::default())
    })
}

async fn cp(conns: Arc<Connections>, journal: JournalArg, a: CpArgs) -> anyhow::Result<ExitCode> {
    let (specs, listing) = cp_specs(
        &conns,
        CpRequest {
            src: &a.src,
            dst: &a.dst,
            recursive: a.recursive,
            include: &a.include,
            exclude: &a.exclude,
            delete_source: a.common.delete_source,
        },
    )
    .await?;
    execute(conns, journal, specs, listing, &a.common).await
}

/// The files a manifest lists ('-': standard input).
fn manifest_specs(conns: &Connections, manifest: &str) -> anyhow::Result<Vec<TransferSpec>> {
    let text = if manifest == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the manifest from standard input")?;
        s
    } else {
        std::fs::read_to_string(manifest)
            .map_err(|e| EngineError::Input(format!("cannot read manifest {manifest}: {e}")))?
    };
    let format = ManifestFormat::detect(manifest, &text);
    let specs = parse_manifest(&text, format, manifest, conns)?;
    if specs.is_empty() {
        return Err(EngineError::Input(format!("manifest {manifest} lists no transfers")).into());
    }
    Ok(specs)
}

async fn run_manifest(
    conns: Arc<Connections>,
    journal: JournalArg,
    a: RunArgs,
) -> anyhow::Result<ExitCode> {
    let specs = manifest_specs(&conns, &a.manifest)?;
    execute(conns, journal, specs, Listing::default(), &a.common).await
}

async fn submit(
    conns: Arc<Connections>,
    journal: JournalArg,
    a: SubmitArgs,
) -> anyhow::Result<ExitCode> {
    let specs = match &a.dst {
        Some(dst) => {
            cp_specs(
                &conns,
                CpRequest {
                    src: &a.manifest_or_src,
                    dst,
                    recursive: a.recursive,
                    include: &a.include,
                    exclude: &a.exclude,
                    delete_source: a.delete_source,
                },
            )
            .await?
            .0
        }
        None => {
            if a.recursive {
                return Err(EngineError::Input(
                    "-r needs a source and a destination: barge submit -r SRC DST".into(),
                )
                .into());
            }
            manifest_specs(&conns, &a.manifest_or_src)?
        }
    };
    let (part_size, copy_part_size) = args::part_sizes(&a.part_size, &a.copy_part_size)?;
    let j = journal.open_sql().await?;
    cluster::submit_cmd(
        &conns,
        &j,
        specs,
        barge_engine::cluster::SubmitOptions {
            queue: a.queue,
            delete_source: a.delete_source,
            part_size: Some(part_size),
            copy_part_size: Some(copy_part_size),
            bwlimit: args::bwlimit(a.bwlimit.as_deref())?,
        },
        a.json,
    )
    .await
}

async fn execute(
    conns: Arc<Connections>,
    journal: JournalArg,
    specs: Vec<TransferSpec>,
    listing: Listing,
    common: &Common,
) -> anyhow::Result<ExitCode> {
    let opts = common.run_options()?;
    if !common.quiet && !common.json {
        for s in &listing.skipped {
            eprintln!("skipped {}: {}", s.path, s.reason);
        }
    }
    // A shared journal: submit, and work here alongside any other workers. Local files stay
    // with this process (other machines cannot reach them).
    let local = specs.iter().any(|s| s.src.is_local() || s.dst.is_local());
    if journal.is_shared() && !common.dry_run && !local {
        let j = journal.open_sql().await?;
        return cluster::run_shared(conns, j, specs, listing.skipped, common).await;
    }
    let journal = if common.dry_run {
        Arc::new(MemoryJournal::default()) as Arc<dyn Journal>
    } else {
        journal.open().await?
    };
    let (summary, cancelled) =
        run_local(conns, journal, specs, listing, common, &opts, |e: Engine| e).await?;
    if common.json {
        out!("{}", serde_json::to_string_pretty(&summary)?);
    } else if common.dry_run {
        print_plan(&summary.files);
    } else if !common.quiet {
        print_summary(&summary);
    }
    Ok(if cancelled {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// Run files in this process: progress on the terminal, Ctrl-C stops the run (a durable
/// journal keeps its uploads for a resume). Returns the summary and whether it was stopped.
async fn run_local(
    conns: Arc<Connections>,
    journal: Arc<dyn Journal>,
    specs: Vec<TransferSpec>,
    listing: Listing,
    common: &Common,
    opts: &barge_engine::run::RunOptions,
    adjust: impl FnOnce(Engine) -> Engine,
) -> anyhow::Result<(Summary, bool)> {
    let durable = journal.durable();
    let progress = Arc::new(Progress::new(common.quiet || common.dry_run));
    let skipped = listing.skipped;
    let engine = adjust(
        Engine::new(conns, opts.clone())
            .with_observer(progress.clone())
            .with_journal(journal)
            .with_listing(listing.files),
    );
    let cancel = engine.cancel_token();
    let on_signal = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            if durable {
                eprintln!(
                    "barge: interrupted; unfinished uploads are kept for a resume (Ctrl-C again to quit at once)"
                );
            } else {
                eprintln!(
                    "barge: interrupted; aborting unfinished uploads (Ctrl-C again to quit at once)"
                );
            }
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
        }
    });
    let token = engine.cancel_token();
    let summary = engine.run(specs).await;
    progress.finish();
    if !token.is_cancelled() {
        on_signal.abort();
    }
    let summary = summary?.with_skipped(skipped);
    if token.is_cancelled()
        && durable
        && let Some(id) = &summary.transfer_id
    {
        eprintln!("barge: transfer {id} stopped; `barge resume {id}` continues it");
    }
    Ok((summary, token.is_cancelled()))
}

fn print_summary(s: &Summary) {
    eprintln!(
        "{} of {} files moved and verified, {} in {:.1}s ({}/s), {} through barge, {} retries{}{}",
        s.files_ok,
        s.files_total,
        human(s.bytes),
        s.seconds,
        human(s.bytes_per_second as u64),
        human(s.bytes_through_client),
        s.retries,
        if s.throttled > 0 {
            format!(" ({} throttled)", s.throttled)
        } else {
            String::new()
        },
        if s.files_failed > 0 {
            format!("; {} FAILED", s.files_failed)
        } else {
            String::new()
        }
    );
    if s.files_skipped > 0 {
        eprintln!(
            "{} entries passed over (not files barge copies; listed above and in --json)",
            s.files_skipped
        );
    }
}

async fn cleanup_cmd(conns: Arc<Connections>, a: CleanupArgs) -> anyhow::Result<ExitCode> {
    let loc = parse_loc(&conns, &a.prefix)?;
    let age = parse_age(&a.older_than)?;
    let store = conns.get(&loc.conn).await?;
    let done = cleanup(
        store.as_ref(),
        &loc.path.bucket,
        &loc.path.key,
        age,
        a.dry_run,
    )
    .await?;
    if a.json {
        let list: Vec<serde_json::Value> = done
            .iter()
            .map(|p| {
                serde_json::json!({
                    "key": p.upload.path.key,
                    "upload_id": p.upload.upload_id,
                    "aborted": !a.dry_run,
                })
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for p in &done {
            out!(
                "{} {} (upload {})",
                if a.dry_run { "would abort" } else { "aborted" },
                p.upload.path,
                p.upload.upload_id
            );
        }
        eprintln!(
            "{} stale multipart upload(s) {} under {}",
            done.len(),
            if a.dry_run { "found" } else { "aborted" },
            loc
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn resume(
    conns: Arc<Connections>,
    journal: JournalArg,
    a: ResumeArgs,
) -> anyhow::Result<ExitCode> {
    let j = journal.open_existing().await?;
    let t = j.transfer(&a.id).await?.ok_or_else(|| {
        EngineError::Input(format!(
            "no transfer with id '{}' in the journal (see `barge list`)",
            a.id
        ))
    })?;
    if !t.state.is_resumable() {
        return Err(EngineError::Input(format!(
            "transfer {} is {}: nothing to resume",
            t.id,
            t.state.as_str()
        ))
        .into());
    }
    if journal.spec() != "none" {
        let sql = journal.open_sql().await?;
        if let Some(queue) = sql.submitted_queue(&t.id).await? {
            return cluster::resume_shared(conns, sql, &t.id, &queue, &a.common).await;
        }
    }
    let request: TransferRequest = serde_json::from_str(&t.spec)
        .map_err(|e| EngineError::Journal(format!("transfer {}: unreadable request: {e}", t.id)))?;
    let mut common = a.common;
    common.delete_source |= request.delete_source;
    execute(
        conns,
        journal,
        request.transfers,
        Listing::default(),
        &common,
    )
    .await
}

async fn status(journal: JournalArg, a: StatusArgs) -> anyhow::Result<ExitCode> {
    let j = journal.open_existing().await?;
    let t = match &a.id {
        Some(id) => j.transfer(id).await?.ok_or_else(|| {
            EngineError::Input(format!(
                "no transfer with id '{id}' in the journal (see `barge list`)"
            ))
        })?,
        None => j
            .list_transfers(1)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Input("the journal holds no transfer yet".into()))?,
    };
    let files = j.status(&t.id).await?;
    if a.json {
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "transfer": t, "files": files }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let done = files
        .iter()
        .filter(|f| f.state == barge_engine::journal::FileState::Completed)
        .count();
    out!(
        "transfer {}  {}  {} of {} files completed",
        t.id,
        t.state.as_str(),
        done,
        files.len()
    );
    for f in &files {
        out!(
            "  {:<10} {:>6}/{:<6} parts {:>10}/{:<10} {} -> {}{}",
            f.state.as_str(),
            f.parts_done,
            f.parts_total,
            human(f.bytes_done),
            human(f.size),
            f.src,
            f.dst,
            f.error
                .as_deref()
                .map(|e| format!("\n      error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(journal: JournalArg, a: ListArgs) -> anyhow::Result<ExitCode> {
    args::in_range("--limit", a.limit as u64, 1, 100_000)?;
    let j = journal.open_existing().await?;
    let ts = j.list_transfers(a.limit).await?;
    if a.json {
        out!("{}", serde_json::to_string_pretty(&ts)?);
        return Ok(ExitCode::SUCCESS);
    }
    for t in &ts {
        let age = std::time::Duration::from_secs(
            (barge_engine::journal::now_secs() - t.created_at).max(0) as u64,
        );
        out!(
            "{}  {:<11}  started {} ago",
            t.id,
            t.state.as_str(),
            humantime::format_duration(age)
        );
    }
    if ts.is_empty() {
        eprintln!("no transfers in the journal");
    }
    Ok(ExitCode::SUCCESS)
}

async fn abort(
    conns: Arc<Connections>,
    journal: JournalArg,
    a: AbortArgs,
) -> anyhow::Result<ExitCode> {
    let j = journal.open_existing().await?;
    let n = abort_transfer(&conns, j.as_ref(), &a.id).await?;
    eprintln!("transfer aborted; {n} multipart upload(s) aborted");
    let _ = TransferState::Aborted;
    Ok(ExitCode::SUCCESS)
}

async fn verify(conns: Arc<Connections>, a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let src = parse_loc(&conns, &a.src)?;
    let dst = parse_loc(&conns, &a.dst)?;
    let (s, d) = (conns.get(&src.conn).await?, conns.get(&dst.conn).await?);
    let r =
        barge_engine::finalize::verify_pair(s.as_ref(), &src.path, d.as_ref(), &dst.path).await?;
    if a.json {
        out!("{}", serde_json::to_string_pretty(&r)?);
    } else if r.same {
        out!(
            "same: {} bytes, CRC32C {} ({})",
            r.src_size,
            r.src_crc32c.as_deref().unwrap_or("?"),
            r.method
        );
    } else if r.src_size != r.dst_size {
        out!(
            "DIFFERENT: {src} has {} bytes, {dst} has {}",
            r.src_size,
            r.dst_size
        );
    } else {
        out!(
            "DIFFERENT: CRC32C {} vs {} ({})",
            r.src_crc32c.as_deref().unwrap_or("?"),
            r.dst_crc32c.as_deref().unwrap_or("?"),
            r.method
        );
    }
    Ok(if r.same {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

async fn debug(conns: Arc<Connections>, cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DebugCommand::UploadCeiling {
            dst,
            size,
            part_size,
            concurrency,
        } => upload_ceiling(conns, dst, size, part_size, concurrency).await,
        DebugCommand::DownloadCeiling {
            src,
            part_size,
            concurrency,
        } => download_ceiling(conns, src, part_size, concurrency).await,
    }
}

/// A ceiling command's `--part-size` and `--concurrency`, held to the transfer flags' ranges
/// (its parts are buffers of that size): the part size.
fn ceiling_flags(part_size: &str, concurrency: usize) -> anyhow::Result<u64> {
    args::in_range(
        "--concurrency",
        concurrency as u64,
        1,
        args::MAX_CONCURRENCY,
    )?;
    Ok(args::size_in_range(
        "--part-size",
        part_size,
        1,
        args::MAX_PART_SIZE,
    )?)
}

/// What a ceiling command prints: the bytes, the time, the rate.
fn print_rate(bytes: u64, secs: f64) -> ExitCode {
    out!(
        "{} in {secs:.2}s: {}/s",
        human(bytes),
        human((bytes as f64 / secs) as u64)
    );
    ExitCode::SUCCESS
}

/// `barge debug upload-ceiling`: in-memory parts (no reads) uploaded as fast as the store
/// takes them, then the object deleted.
async fn upload_ceiling(
    conns: Arc<Connections>,
    dst: String,
    size: String,
    part_size: String,
    concurrency: usize,
) -> anyhow::Result<ExitCode> {
    use futures::StreamExt;
    let loc = parse_loc(&conns, &dst)?;
    let size = args::size_in_range("--size", &size, 1, 5 * barge_store::TIB)?;
    let ps = ceiling_flags(&part_size, concurrency)?;
    let store = conns.get(&loc.conn).await?;
    let buf = bytes::Bytes::from(
        (0..ps)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    );
    let crc = barge_store::checksum::crc32c(&buf);
    let parts = barge_engine::plan::split(size, ps);
    let t0 = std::time::Instant::now();
    let up = store
        .create_upload(
            &loc.path,
            &Default::default(),
            barge_store::ChecksumMode::Crc32c,
        )
        .await?;
    let results: Vec<_> = futures::stream::iter(parts)
        .map(|p| {
            let (store, up, buf) = (store.clone(), up.clone(), buf.clone());
            async move {
                let data = buf.slice(0..p.len as usize);
                let c = if p.len == ps {
                    crc
                } else {
                    barge_store::checksum::crc32c(&data)
                };
                store.upload_part(&up, &p, data, Some(c)).await
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut receipts = Vec::new();
    for r in results {
        match r {
            Ok(r) => receipts.push(r),
            Err(e) => {
                store.abort_upload(&up).await.ok();
                return Err(e.into());
            }
        }
    }
    receipts.sort_by_key(|r| r.number);
    store.complete_upload(&up, &receipts).await?;
    let secs = t0.elapsed().as_secs_f64();
    store.delete(&loc.path, None).await?;
    Ok(print_rate(size, secs))
}

/// `barge debug download-ceiling`: every part of SRC read as a download reads it (the store's
/// chunk stream), the bytes counted and dropped.
async fn download_ceiling(
    conns: Arc<Connections>,
    src: String,
    part_size: String,
    concurrency: usize,
) -> anyhow::Result<ExitCode> {
    use futures::StreamExt;
    let loc = parse_loc(&conns, &src)?;
    let ps = ceiling_flags(&part_size, concurrency)?;
    let store = conns.get(&loc.conn).await?;
    let t0 = std::time::Instant::now();
    let meta = store.head(&loc.path).await?;
    let pin = barge_store::Pin::of(&meta);
    let parts = barge_engine::plan::split(meta.size, ps);
    let read: Vec<_> = futures::stream::iter(parts)
        .map(|p| {
            let (store, path, pin) = (store.clone(), &loc.path, &pin);
            async move {
                let mut chunks = store.get_range_stream(path, pin, p.offset, p.len).await?;
                let mut n = 0u64;
                while let Some(c) = chunks.next().await {
                    n += c?.len() as u64;
                }
                Ok::<u64, barge_store::StoreError>(n)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut total = 0;
    for n in read {
        total += n?;
    }
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        total == meta.size,
        "read {total} bytes of an object of {} bytes",
        meta.size
    );
    Ok(print_rate(total, secs))
}
