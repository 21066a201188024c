//! The `barge` command: a thin layer over the engine. Flags become a validated configuration,
//! the engine does the work, this file prints the result and picks the exit status.

mod args;
mod progress;

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use barge_engine::EngineError;
use barge_engine::connections::{ConfigFile, Connections};
use barge_engine::input::{Filters, ManifestFormat, expand_prefix, parse_manifest, single};
use barge_engine::location::Location;
use barge_engine::report::Summary;
use barge_engine::run::{Engine, cleanup};
use barge_engine::size::human;
use clap::Parser;

use args::{CleanupArgs, Cli, Command, Common, CpArgs, RunArgs, parse_age};
use progress::{Progress, print_plan};

/// Exit statuses: 0 every file moved and verified; 1 some file failed; 2 the run was refused
/// (bad input, nothing moved); 130 interrupted.
const EXIT_FAILED: u8 = 1;
const EXIT_REFUSED: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
            let refused = e
                .downcast_ref::<EngineError>()
                .is_some_and(|e| matches!(e, EngineError::Input(_) | EngineError::Config { .. }));
            ExitCode::from(if refused { EXIT_REFUSED } else { EXIT_FAILED })
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,aws=warn,hyper=warn",
        _ => "debug,aws=info,hyper=info,h2=info,rustls=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BARGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let (file, _) = ConfigFile::load(cli.config.as_deref())?;
    let conns = Arc::new(Connections::new(file));
    match cli.command {
        Command::Cp(a) => cp(conns, a).await,
        Command::Run(a) => run_manifest(conns, a).await,
        Command::Cleanup(a) => cleanup_cmd(conns, a).await,
    }
}

fn parse_loc(conns: &Connections, s: &str) -> anyhow::Result<Location> {
    Ok(Location::parse(s, &|n| conns.is_configured(n))?)
}

async fn cp(conns: Arc<Connections>, a: CpArgs) -> anyhow::Result<ExitCode> {
    let src = parse_loc(&conns, &a.src)?;
    let dst = parse_loc(&conns, &a.dst)?;
    if !a.recursive && (!a.include.is_empty() || !a.exclude.is_empty()) {
        return Err(EngineError::Input("--include and --exclude go with -r".into()).into());
    }
    let specs = if a.recursive {
        let filters = Filters::new(&a.include, &a.exclude)?;
        let store = conns.get(&src.conn).await?;
        let specs = expand_prefix(&src, &dst, store.as_ref(), &filters).await?;
        if specs.is_empty() {
            return Err(EngineError::Input(format!(
                "nothing to copy: no object under {src} matches"
            ))
            .into());
        }
        specs
    } else {
        if src.path.key.is_empty() || src.path.key.ends_with('/') {
            return Err(EngineError::Input(format!(
                "{src} is a prefix, not an object: add -r to copy everything under it"
            ))
            .into());
        }
        vec![single(src, dst)]
    };
    execute(conns, specs, &a.common).await
}

async fn run_manifest(conns: Arc<Connections>, a: RunArgs) -> anyhow::Result<ExitCode> {
    let text = if a.manifest == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the manifest from standard input")?;
        s
    } else {
        std::fs::read_to_string(&a.manifest)
            .map_err(|e| EngineError::Input(format!("cannot read manifest {}: {e}", a.manifest)))?
    };
    let format = ManifestFormat::detect(&a.manifest, &text);
    let specs = parse_manifest(&text, format, &a.manifest, &conns)?;
    if specs.is_empty() {
        return Err(
            EngineError::Input(format!("manifest {} lists no transfers", a.manifest)).into(),
        );
    }
    execute(conns, specs, &a.common).await
}

async fn execute(
    conns: Arc<Connections>,
    specs: Vec<barge_engine::input::TransferSpec>,
    common: &Common,
) -> anyhow::Result<ExitCode> {
    let opts = common.run_options()?;
    let progress = Arc::new(Progress::new(common.quiet || common.dry_run));
    let engine = Engine::new(conns, opts).with_observer(progress.clone());
    let cancel = engine.cancel_token();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "barge: interrupted; aborting unfinished uploads (Ctrl-C again to quit at once)"
            );
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
        }
    });
    let token = engine.cancel_token();
    let summary = engine.run(specs).await?;
    progress.finish();
    if common.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if common.dry_run {
        print_plan(&summary.files);
    } else if !common.quiet {
        print_summary(&summary);
    }
    Ok(if token.is_cancelled() {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

fn print_summary(s: &Summary) {
    eprintln!(
        "{} of {} files moved and verified, {} in {:.1}s ({}/s), {} through barge, {} retries{}",
        s.files_ok,
        s.files_total,
        human(s.bytes),
        s.seconds,
        human(s.bytes_per_second as u64),
        human(s.bytes_through_client),
        s.retries,
        if s.files_failed > 0 {
            format!("; {} FAILED", s.files_failed)
        } else {
            String::new()
        }
    );
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
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for p in &done {
            println!(
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
