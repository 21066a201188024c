//! Command-line flags, turned into a validated configuration before anything runs.

use std::path::PathBuf;
use std::time::Duration;

use barge_engine::plan::PlanOptions;
use barge_engine::run::RunOptions;
use barge_engine::size::parse_size;
use barge_engine::{EngineError, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "barge",
    version,
    about = "Move large files between object stores: fast, verified, resumable",
    long_about = "Move large files between S3-compatible object stores and local files, in parallel \
parts, server-side when the store can, verifying every byte.\n\n\
Locations: s3://BUCKET/KEY (the default connection: the standard AWS environment), \
NAME:BUCKET/KEY (a connection from the config file), or a local path."
)]
pub struct Cli {
    /// Connections file (TOML). Default: $BARGE_CONFIG, else ~/.config/barge/config.toml.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The journal: a SQLite file path, a postgres:// URL, or 'none' (nothing kept: no resume).
    /// Default: $BARGE_JOURNAL, else barge/journal.sqlite in the user's state folder.
    #[arg(long, global = true, value_name = "PATH|URL")]
    pub journal: Option<String>,

    /// Threads that drive the network (the async runtime); disk reads and writes have their own
    /// pool either way. Default: 1 on machines with up to 4 cores (15-30% less CPU than handing
    /// each request between threads; at ~0.8 CPU-s per GiB one thread has room for about
    /// 1 GiB/s), else one per core.
    #[arg(long, global = true, env = "BARGE_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy one object, or with -r every object under a prefix or folder.
    Cp(CpArgs),
    /// Make DST hold what SRC holds: copy what is missing or different (by checksum), skip
    /// what is the same, and with --delete remove what SRC does not have.
    Sync(SyncArgs),
    /// Run every transfer of a manifest (JSON, YAML or CSV list of
    /// {src_conn_id, src_bucket, src_key, dest_conn_id, dest_bucket, dest_key}).
    Run(RunArgs),
    /// List and abort stale multipart uploads under a prefix.
    Cleanup(CleanupArgs),
    /// Show a transfer's files: state, parts done, bytes, last error (default: the newest).
    Status(StatusArgs),
    /// Show recent transfers.
    List(ListArgs),
    /// Continue an interrupted transfer (running the same command again does the same).
    Resume(ResumeArgs),
    /// Stop a transfer for good: abort its unfinished uploads.
    Abort(AbortArgs),
    /// Check that DST holds the same bytes as SRC (by checksum, reading both if it must).
    Verify(VerifyArgs),
    /// Record a transfer for `barge worker` processes (a postgres:// journal) and print its id.
    Submit(SubmitArgs),
    /// Work on submitted transfers until stopped: claim parts, move them, finalize files.
    Worker(WorkerArgs),
    /// Tools for measuring (used by bench/).
    #[command(hide = true, subcommand)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Upload in-memory parts (no reads) as fast as the store accepts them, then delete the
    /// object: the server's ceiling for barge's upload path.
    UploadCeiling {
        dst: String,
        #[arg(long, default_value = "4GiB")]
        size: String,
        #[arg(long, default_value = "16MiB")]
        part_size: String,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Read an object with barge's download path (ranged GETs as a download reads them) and
    /// drop the bytes, writing nothing: the server's ceiling for barge's downloads.
    DownloadCeiling {
        src: String,
        #[arg(long, default_value = "16MiB")]
        part_size: String,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A manifest (JSON, YAML or CSV; '-' reads standard input), or a source with DST.
    pub manifest_or_src: String,
    /// The destination, when the first argument is a source.
    pub dst: Option<String>,
    /// Copy every object under SRC (a prefix) to under DST.
    #[arg(short, long)]
    pub recursive: bool,
    /// With -r: copy only paths (relative to SRC) matching this glob. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// With -r: skip paths (relative to SRC) matching this glob. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Only workers started with this queue work on the transfer.
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub queue: String,
    /// Smallest part size; raised per file when the 10,000-part cap requires it.
    #[arg(long, default_value = "16MiB", value_name = "SIZE")]
    pub part_size: String,
    /// Smallest part size for server-side copies.
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub copy_part_size: String,
    /// Delete each source object (exactly its key and version) once its copy is verified.
    #[arg(long)]
    pub delete_source: bool,
    /// Bytes per second the whole transfer reads, and writes, at most (like 100MiB), shared
    /// evenly by the workers working on it.
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<String>,
    /// Print {"transfer_id": ...} as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Work only on transfers submitted to this queue.
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub queue: String,
    /// Parts in flight in this worker.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,
    /// File-level tasks in flight in this worker (plans, small files moved whole, completions):
    /// round trips rather than bandwidth, so more of them than parts.
    #[arg(long, default_value_t = barge_engine::run::DEFAULT_FILES, value_name = "N")]
    pub files: usize,
    /// Hard budget for this worker's buffered part data.
    #[arg(long, default_value = "512MiB", value_name = "SIZE")]
    pub max_memory: String,
    /// Attempts per request before a file fails.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub retries: u32,
    /// Bytes per second this worker reads, and writes, at most (like 10MiB or 500K).
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<String>,
    /// How long a claim on a part lasts unless renewed: a worker that dies holds its parts
    /// this long.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub lease: String,
    /// How long to wait for an unreachable journal before exiting.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub journal_wait: String,
    /// Serve Prometheus metrics on this address (like 0.0.0.0:9187).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Exit once the queue holds no unfinished work (for batch jobs).
    #[arg(long)]
    pub exit_when_idle: bool,
    /// Work on files of this machine's file system that submitted transfers name (off: a
    /// shared journal's rows could otherwise make this worker read, upload and delete local
    /// files; `barge submit` itself refuses local paths).
    #[arg(long)]
    pub allow_local: bool,
    /// This worker's name in the journal's leases. Default: host-pid-random.
    #[arg(long, value_name = "NAME")]
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Transfer id (or a unique prefix of it).
    pub id: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Transfer id (or a unique prefix of it).
    pub id: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct AbortArgs {
    /// Transfer id (or a unique prefix of it).
    pub id: String,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub src: String,
    pub dst: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: s3://BUCKET/KEY, NAME:BUCKET/KEY or a local path.
    pub src: String,
    /// Destination. Ending in '/' (or an existing folder) means "into this folder".
    pub dst: String,
    /// Copy every object under SRC (a prefix or a folder) to under DST.
    #[arg(short, long)]
    pub recursive: bool,
    /// With -r: copy only paths (relative to SRC) matching this glob. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// With -r: skip paths (relative to SRC) matching this glob. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source prefix or folder: s3://BUCKET/PREFIX, NAME:BUCKET/PREFIX or a local folder.
    pub src: String,
    /// Destination prefix or folder.
    pub dst: String,
    /// Sync only paths (relative to SRC and DST) matching this glob. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out paths (relative to SRC and DST) matching this glob: neither copied nor
    /// deleted. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Delete destination objects that have no source, after every copy succeeded (none when
    /// any copy failed).
    #[arg(long)]
    pub delete: bool,
    /// With --delete: delete at most N objects; the rest are listed and kept.
    #[arg(long, value_name = "N")]
    pub max_delete: Option<u64>,
    /// Judge files of the same size unchanged (no checksums).
    #[arg(long, conflicts_with = "size_and_time")]
    pub size_only: bool,
    /// Judge files unchanged when the sizes match and the destination is no older than the
    /// source (no checksums).
    #[arg(long)]
    pub size_and_time: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The manifest file; '-' reads standard input.
    pub manifest: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Where to look: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, NAME:BUCKET/PREFIX or a local folder.
    pub prefix: String,
    /// Only uploads started longer ago than this (like 24h, 30m, 7d).
    #[arg(long, default_value = "24h", value_name = "AGE")]
    pub older_than: String,
    /// List what would be aborted; abort nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Smallest part size; raised per file when the 10,000-part cap requires it.
    #[arg(long, default_value = "16MiB", value_name = "SIZE")]
    pub part_size: String,
    /// Smallest part size for server-side copies (no bytes pass through barge).
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub copy_part_size: String,
    /// Parts in flight across all files (and large files under way at once).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,
    /// Files moved at once: small files (one request each way) wait on round trips, not
    /// bandwidth, so more of them are in flight than parts.
    #[arg(long, default_value_t = barge_engine::run::DEFAULT_FILES, value_name = "N")]
    pub files: usize,
    /// Hard budget for buffered part data.
    #[arg(long, default_value = "512MiB", value_name = "SIZE")]
    pub max_memory: String,
    /// Attempts per request before a file fails (throttling, 5xx, timeouts, dropped connections).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub retries: u32,
    /// Bytes per second this process reads, and writes, at most (like 10MiB or 500K); server-side
    /// copies are not counted.
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<String>,
    /// Delete each source object (exactly its key and version) once its copy is verified.
    #[arg(long)]
    pub delete_source: bool,
    /// Storage class of every object written (STANDARD_IA, GLACIER_IR, ...), over the
    /// connection's `storage_class`.
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// Server-side encryption of every object written: AES256 (SSE-S3) or aws:kms (SSE-KMS).
    #[arg(long, value_name = "AES256|aws:kms")]
    pub sse: Option<String>,
    /// With --sse aws:kms: the KMS key id or ARN (else the bucket's default key).
    #[arg(long, value_name = "KEY")]
    pub sse_kms_key_id: Option<String>,
    /// With --sse aws:kms: an encryption context, a JSON object of strings.
    #[arg(long, value_name = "JSON")]
    pub sse_kms_context: Option<String>,
    /// A canned ACL for every object written (bucket-owner-full-control, private, ...).
    #[arg(long, value_name = "ACL")]
    pub acl: Option<String>,
    /// Set this tag on every object written (replacing the source's tags). Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag: Vec<String>,
    /// The buckets are requester-pays (either side): every request says the requester pays.
    #[arg(long)]
    pub requester_pays: bool,
    /// A multipart object's CRC32C: composite (of its parts') or full-object (of all its
    /// bytes, comparable with any copy; where the store supports it).
    #[arg(long, value_name = "composite|full-object")]
    pub checksum_type: Option<String>,
    /// The checksum sent with every part and object: crc32c (default) or crc64nvme (the
    /// store keeps a full-object CRC64NVME; where it supports it).
    #[arg(long, value_name = "crc32c|crc64nvme")]
    pub checksum_algorithm: Option<String>,
    /// Print the plan (strategy, part size, part count per file); move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one machine-readable summary on standard output.
    #[arg(long)]
    pub json: bool,
    /// No progress display and no per-file lines; errors still go to standard error.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The ranges flags are held to: beyond them a value is a typo, or would overflow what it
/// sizes (a semaphore, a buffer, a part count).
pub const MAX_CONCURRENCY: u64 = 4096;
pub const MAX_FILES: u64 = 65_536;
pub const MAX_RETRIES: u64 = 100;
/// The largest part any store takes (S3: 5 GiB).
pub const MAX_PART_SIZE: u64 = 5 * barge_store::GIB;
pub const MAX_MEMORY: u64 = 64 * barge_store::TIB;

/// `value` of `flag` within `lo..=hi`, or an error naming the flag and the range.
pub fn in_range(flag: &str, value: u64, lo: u64, hi: u64) -> Result<()> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(EngineError::Input(format!(
            "{flag} {value} is out of range: use {lo} to {hi}"
        )))
    }
}

/// A size flag parsed and held within `lo..=hi` (the message names the flag and the range).
pub fn size_in_range(flag: &str, text: &str, lo: u64, hi: u64) -> Result<u64> {
    let v = parse_size(text).map_err(|e| EngineError::Input(format!("{flag}: {e}")))?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(EngineError::Input(format!(
            "{flag} {text} is out of range: use {} to {}",
            human_exact(lo),
            human_exact(hi)
        )))
    }
}

/// A size as typed back to the user: whole units where it is one.
fn human_exact(n: u64) -> String {
    for (unit, size) in [
        ("TiB", barge_store::TIB),
        ("GiB", barge_store::GIB),
        ("MiB", barge_store::MIB),
        ("KiB", 1024),
    ] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n} bytes")
}

/// `--max-memory`, checked.
pub fn max_memory(text: &str) -> Result<u64> {
    size_in_range("--max-memory", text, 1, MAX_MEMORY)
}

/// `--part-size` and `--copy-part-size`, checked.
pub fn part_sizes(part_size: &str, copy_part_size: &str) -> Result<(u64, u64)> {
    Ok((
        size_in_range("--part-size", part_size, 1, MAX_PART_SIZE)?,
        size_in_range("--copy-part-size", copy_part_size, 1, MAX_PART_SIZE)?,
    ))
}

/// `--concurrency`, `--files` and `--retries`, checked.
pub fn counts(concurrency: usize, files: usize, retries: u32) -> Result<()> {
    in_range("--concurrency", concurrency as u64, 1, MAX_CONCURRENCY)?;
    in_range("--files", files as u64, 1, MAX_FILES)?;
    in_range("--retries", u64::from(retries), 1, MAX_RETRIES)
}

impl Common {
    /// `--storage-class`, `--sse`, `--acl`, `--tag`, `--requester-pays`, checked.
    pub fn write_options(&self) -> Result<barge_store::s3::WriteOptions> {
        let mut tags = Vec::new();
        for t in &self.tag {
            let (k, v) = t
                .split_once('=')
                .ok_or_else(|| EngineError::Input(format!("--tag '{t}' is not KEY=VALUE")))?;
            tags.push((k.to_string(), v.to_string()));
        }
        barge_engine::connections::WriteSettings {
            storage_class: self.storage_class.as_deref(),
            sse: self.sse.as_deref(),
            sse_kms_key_id: self.sse_kms_key_id.as_deref(),
            sse_kms_context: self.sse_kms_context.as_deref(),
            acl: self.acl.as_deref(),
            tags,
            requester_pays: self.requester_pays,
            checksum_type: self.checksum_type.as_deref(),
            checksum_algorithm: self.checksum_algorithm.as_deref(),
        }
        .check("the command line")
    }

    pub fn run_options(&self) -> Result<RunOptions> {
        counts(self.concurrency, self.files, self.retries)?;
        let (part_size, copy_part_size) = part_sizes(&self.part_size, &self.copy_part_size)?;
        let max_memory = max_memory(&self.max_memory)?;
        if max_memory < part_size {
            return Err(EngineError::Input(format!(
                "--max-memory ({}) is smaller than --part-size ({}): no part would fit; raise --max-memory or lower --part-size",
                self.max_memory, self.part_size
            )));
        }
        let mut opts = RunOptions {
            plan: PlanOptions {
                part_size,
                copy_part_size,
                max_memory,
            },
            concurrency: self.concurrency,
            files: self.files,
            delete_source: self.delete_source,
            dry_run: self.dry_run,
            ..RunOptions::default()
        };
        opts.retry.max_attempts = self.retries;
        opts.bwlimit = bwlimit(self.bwlimit.as_deref())?;
        Ok(opts)
    }
}

/// `--bwlimit RATE`: a size per second (`10MiB`, `10MiB/s`, `500K`), at least 1 KiB/s.
pub fn bwlimit(rate: Option<&str>) -> Result<Option<u64>> {
    let Some(rate) = rate else {
        return Ok(None);
    };
    let t = rate.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let n = barge_engine::size::parse_size(t).map_err(|_| {
        EngineError::Input(format!(
            "--bwlimit '{rate}' is not a rate: write bytes per second with a unit, like 10MiB or 500K"
        ))
    })?;
    in_range("--bwlimit", n, 1024, 1 << 50)?;
    Ok(Some(n))
}

pub fn parse_duration(flag: &str, s: &str) -> Result<Duration> {
    humantime::parse_duration(s).map_err(|e| {
        EngineError::Input(format!(
            "{flag} '{s}' is not a duration ({e}): write like 30s, 5m or 2h"
        ))
    })
}

pub fn parse_age(s: &str) -> Result<Duration> {
    humantime::parse_duration(s).map_err(|e| {
        EngineError::Input(format!(
            "--older-than '{s}' is not a duration ({e}): write like 24h, 30m or 7d"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        Cli::try_parse_from(["barge", "cp", "-r", "a", "b", "--include", "*.csv"]).expect("cp");
        Cli::try_parse_from(["barge", "run", "m.json", "--delete-source", "--json"]).expect("run");
        Cli::try_parse_from(["barge", "cleanup", "s3://b/p", "--older-than", "1h"])
            .expect("cleanup");
        assert!(Cli::try_parse_from(["barge", "cp", "a"]).is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let cli =
            Cli::try_parse_from(["barge", "cp", "a", "b", "--max-memory", "8MiB"]).expect("parse");
        let Command::Cp(cp) = cli.command else {
            panic!("cp")
        };
        let e = cp.common.run_options().expect_err("memory below part size");
        assert!(e.to_string().contains("--max-memory"), "{e}");
        let cli = Cli::try_parse_from(["barge", "cp", "a", "b", "--files", "0"]).expect("parse");
        let Command::Cp(cp) = cli.command else {
            panic!("cp")
        };
        let e = cp.common.run_options().expect_err("no files at a time");
        assert_eq!(e.to_string(), "--files 0 is out of range: use 1 to 65536");
        for (flag, value, msg) in [
            (
                "--concurrency",
                "2305843009213693952",
                "--concurrency 2305843009213693952 is out of range: use 1 to 4096",
            ),
            (
                "--files",
                "18446744073709551615",
                "--files 18446744073709551615 is out of range: use 1 to 65536",
            ),
            (
                "--retries",
                "0",
                "--retries 0 is out of range: use 1 to 100",
            ),
            (
                "--part-size",
                "18446744073709551615",
                "--part-size 18446744073709551615 is out of range: use 1 bytes to 5GiB",
            ),
            (
                "--copy-part-size",
                "0",
                "--copy-part-size 0 is out of range: use 1 bytes to 5GiB",
            ),
            (
                "--max-memory",
                "65TiB",
                "--max-memory 65TiB is out of range: use 1 bytes to 64TiB",
            ),
            ("--part-size", "lots", "--part-size: 'lots' is not a size"),
        ] {
            let cli = Cli::try_parse_from(["barge", "cp", "a", "b", flag, value]).expect("parse");
            let Command::Cp(cp) = cli.command else {
                panic!("cp")
            };
            let e = cp.common.run_options().expect_err(flag).to_string();
            assert!(e.starts_with(msg), "{flag} {value}: {e}");
        }
        // A budget and a part of the same odd size: the part fits (one unit for both).
        let cli = Cli::try_parse_from([
            "barge",
            "cp",
            "a",
            "b",
            "--part-size",
            "3000",
            "--max-memory",
            "3000",
        ])
        .expect("parse");
        let Command::Cp(cp) = cli.command else {
            panic!("cp")
        };
        assert_eq!(cp.common.run_options().expect("fits").plan.max_memory, 3000);
        let cli = Cli::try_parse_from(["barge", "cp", "a", "b"]).expect("parse");
        let Command::Cp(cp) = cli.command else {
            panic!("cp")
        };
        let o = cp.common.run_options().expect("defaults");
        assert_eq!((o.concurrency, o.files), (16, 64));
        assert!(parse_age("soon").is_err());
        assert_eq!(parse_age("2h").ok(), Some(Duration::from_secs(7200)));
    }
}
