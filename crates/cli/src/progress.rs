//! What a person sees while barge runs: progress bars on a terminal, one line per file otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use barge_engine::journal::FileId;
use barge_engine::plan::FilePlan;
use barge_engine::report::{FileOutcome, Observer, Status};
use barge_engine::size::human;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

const MAX_FILE_BARS: usize = 6;

pub struct Progress {
    quiet: bool,
    bars: Option<Bars>,
    files: Mutex<HashMap<FileId, ProgressBar>>,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let bars = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            let total = multi.add(ProgressBar::new(0));
            total.set_style(
                ProgressStyle::with_template(
                    "{prefix:>5} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            total.set_prefix("total");
            total.enable_steady_tick(Duration::from_millis(250));
            Bars { multi, total }
        });
        Self {
            quiet,
            bars,
            files: Mutex::new(HashMap::new()),
        }
    }

    fn line(&self, s: String) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(s);
            }
            None => eprintln!("{s}"),
        }
    }

    /// The total to show, when it is learnt bit by bit (files planned by workers).
    pub fn set_total(&self, bytes: u64) {
        if let Some(b) = &self.bars {
            b.total.set_length(bytes);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.total.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn transfer_started(&self, id: &str, resumed: bool) {
        self.line(if resumed {
            format!("transfer {id}: resuming an interrupted run")
        } else {
            format!("transfer {id}")
        });
    }

    /// Files are planned as they start: the total grows with each.
    fn planned(&self, plans: &[FilePlan]) {
        if let Some(b) = &self.bars {
            b.total.inc_length(plans.iter().map(|p| p.size).sum());
        }
    }

    fn file_started(&self, plan: &FilePlan) {
        let Some(b) = &self.bars else { return };
        if !plan.strategy.is_multipart() {
            return;
        }
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if files.len() >= MAX_FILE_BARS {
            return;
        }
        let bar = b.multi.add(ProgressBar::new(plan.size));
        bar.set_style(
            ProgressStyle::with_template(
                "  {msg:40!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(plan.dst.to_string());
        files.insert(plan.id, bar);
    }

    fn progress(&self, file: FileId, bytes: u64) {
        if let Some(b) = &self.bars {
            b.total.inc(bytes);
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(bar) = files.get(&file) {
                bar.inc(bytes);
            }
        }
    }

    fn file_finished(&self, o: &FileOutcome) {
        if let Some(bar) = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&o.id)
        {
            bar.finish_and_clear();
        }
        let size = o.size.map(human).unwrap_or_else(|| "?".into());
        match o.status {
            Status::Ok => {
                let rate = if o.seconds > 0.0 {
                    format!(
                        ", {}/s",
                        human((o.size.unwrap_or(0) as f64 / o.seconds) as u64)
                    )
                } else {
                    String::new()
                };
                self.line(format!(
                    "ok      {} -> {} ({size}, {:?}{rate}{})",
                    o.src,
                    o.dst,
                    o.verified,
                    if o.source_deleted {
                        ", source deleted"
                    } else {
                        ""
                    }
                ));
            }
            Status::Failed | Status::Cancelled => {
                // Failures are printed even with --quiet.
                let msg = format!(
                    "FAILED  {} -> {}: {}",
                    o.src,
                    o.dst,
                    o.error.as_deref().unwrap_or("unknown error")
                );
                match &self.bars {
                    Some(b) => {
                        let _ = b.multi.println(msg);
                    }
                    None => eprintln!("{msg}"),
                }
            }
            Status::Planned => {}
        }
    }
}

/// The `--dry-run` table: one line per file.
pub fn print_plan(outcomes: &[FileOutcome]) {
    for o in outcomes {
        match (o.status, o.strategy) {
            (Status::Planned, Some(strategy)) => {
                let size = o.size.unwrap_or(0);
                let how = if strategy.is_multipart() {
                    format!(
                        "{strategy:?}: {} parts of {}",
                        o.parts.unwrap_or(0),
                        human(o.part_size.unwrap_or(0))
                    )
                } else {
                    format!("{strategy:?}")
                };
                out!("{} -> {}  {}  {how}", o.src, o.dst, human(size));
            }
            _ => out!(
                "{} -> {}  cannot be planned: {}",
                o.src,
                o.dst,
                o.error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
}
