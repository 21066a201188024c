//! `barge sync SRC DST`: decide per file (the engine's `sync` module), print the plan with
//! `--dry-run`, else resume an interrupted sync of the same trees, copy, and only when every
//! copy succeeded delete what the source does not have.

use std::process::ExitCode;
use std::sync::Arc;

use barge_engine::EngineError;
use barge_engine::connections::Connections;
use barge_engine::input::{Filters, Listed, TransferSpec};
use barge_engine::journal::{Journal, MemoryJournal, TransferState};
use barge_engine::report::{Status, Summary, Verification};
use barge_engine::run::{Engine, TransferRequest};
use barge_engine::sync::{Action, Compare, Decision, NotDeleted, SyncOptions};

use crate::args::SyncArgs;
use crate::{EXIT_FAILED, EXIT_INTERRUPTED, JournalArg, parse_loc, print_summary, run_local};

/// The counts `--json` prints.
struct SyncReport<'a> {
    copied: usize,
    skipped: usize,
    deleted: usize,
    failed: usize,
    not_deleted: &'a [NotDeleted],
    dry_run: bool,
    decisions: &'a [Decision],
    copies: Vec<&'a Summary>,
}

impl SyncReport<'_> {
    fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(&serde_json::json!({
            "copied": self.copied,
            "skipped": self.skipped,
            "deleted": self.deleted,
            "failed": self.failed,
            "not_deleted": self.not_deleted,
            "dry_run": self.dry_run,
            "decisions": self.decisions,
            "copies": self.copies,
        }))
    }
}

pub async fn sync_cmd(
    conns: Arc<Connections>,
    journal: JournalArg,
    a: SyncArgs,
) -> anyhow::Result<ExitCode> {
    let common = &a.common;
    let opts = common.run_options()?;
    if common.delete_source {
        return Err(EngineError::Input(
            "sync never deletes sources: --delete removes destination objects that have no source"
                .into(),
        )
        .into());
    }
    if a.max_delete.is_some() && !a.delete {
        return Err(EngineError::Input("--max-delete goes with --delete".into()).into());
    }
    let src = parse_loc(&conns, &a.src)?;
    let dst = parse_loc(&conns, &a.dst)?;
    let pair = [TransferSpec {
        src: src.clone(),
        dst: dst.clone(),
    }];
    let resolver = barge_engine::identity::Resolver::new(&conns, &pair).await;
    if barge_engine::identity::trees_overlap(&resolver, &src, &dst) {
        return Err(EngineError::Input(format!(
            "{dst} and {src} are one folder or one holds the other: a sync would copy the tree into itself{}; nothing was copied or deleted. Sync to a folder outside the source",
            if a.delete { " and delete from it" } else { "" }
        ))
        .into());
    }
    let filters = Filters::new(&a.include, &a.exclude)?;
    let (src_store, dst_store) = (conns.get(&src.conn).await?, conns.get(&dst.conn).await?);
    let sync_opts = SyncOptions {
        compare: if a.size_only {
            Compare::SizeOnly
        } else if a.size_and_time {
            Compare::SizeAndTime
        } else {
            Compare::Checksum
        },
        delete: a.delete,
        requests: common.files,
        listed_etags: !src.is_local() && !dst.is_local(),
        retry: opts.retry.clone(),
    };
    let fp = barge_engine::sync::fingerprint(&src, &dst);
    let journal = if common.dry_run {
        Arc::new(MemoryJournal::default()) as Arc<dyn Journal>
    } else {
        journal.open().await?
    };

    // An interrupted sync of these trees: finish the copies it had decided first, so that its
    // uploads are continued rather than started over.
    let mut summaries = Vec::new();
    if !common.dry_run
        && let Some(t) = journal.find_resumable(&fp).await?
        && t.state != TransferState::Failed
    {
        let request: TransferRequest = serde_json::from_str(&t.spec).map_err(|e| {
            EngineError::Journal(format!("transfer {}: unreadable request: {e}", t.id))
        })?;
        if !common.quiet && !common.json {
            eprintln!(
                "barge: continuing the interrupted sync {} ({} files) first",
                t.id,
                request.transfers.len()
            );
        }
        let fp = fp.clone();
        let (s, cancelled) = run_local(
            conns.clone(),
            journal.clone(),
            request.transfers,
            Listed::default(),
            common,
            &opts,
            move |e: Engine| e.with_fingerprint(fp),
        )
        .await?;
        if cancelled {
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        summaries.push(s);
    }

    let plan = barge_engine::sync::plan(
        &src,
        &dst,
        src_store.as_ref(),
        dst_store.as_ref(),
        &filters,
        &sync_opts,
    )
    .await?;
    if plan.source_files == 0 {
        return Err(EngineError::Input(format!(
            "nothing to sync: no object under {src} matches; nothing was copied{}",
            if a.delete { " or deleted" } else { "" }
        ))
        .into());
    }
    if !common.quiet && !common.json {
        for s in &plan.skipped_entries {
            eprintln!("skipped {}: {}", s.path, s.reason);
        }
    }
    let skipped = plan
        .decisions
        .iter()
        .filter(|d| d.action == Action::Skip)
        .count();

    if common.dry_run {
        let allowed = barge_engine::sync::allowed_deletes(plan.deletes.len(), a.max_delete);
        let refused = plan.deletes.len() - allowed;
        if common.json {
            out!(
                "{}",
                SyncReport {
                    copied: plan.copies.len(),
                    skipped,
                    deleted: allowed,
                    failed: 0,
                    not_deleted: &[],
                    dry_run: true,
                    decisions: &plan.decisions,
                    copies: Vec::new(),
                }
                .json()?
            );
        } else {
            for d in &plan.decisions {
                match d.action {
                    Action::Copy => out!(
                        "copy   {} -> {} ({})",
                        d.src.as_deref().unwrap_or_default(),
                        d.dst,
                        d.reason
                    ),
                    Action::Skip => out!("skip   {} ({})", d.dst, d.reason),
                    Action::Delete => out!("delete {} ({})", d.dst, d.reason),
                }
            }
            eprintln!(
                "dry run: {} to copy, {skipped} unchanged, {} to delete{}",
                plan.copies.len(),
                allowed,
                if refused > 0 {
                    format!(
                        "; {refused} more without a source kept (--max-delete {})",
                        a.max_delete.unwrap_or_default()
                    )
                } else {
                    String::new()
                }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }

    if !plan.copies.is_empty() {
        let specs = plan.copies.iter().map(|(s, _)| s.clone()).collect();
        let listing = Listed {
            files: plan.copies.clone(),
            skipped: Vec::new(),
        };
        let fp = fp.clone();
        let mut run_opts = opts.clone();
        // A fresh transfer: an earlier one under this fingerprint was continued above or had
        // failed, and its files are not this run's.
        run_opts.resume = false;
        let (s, cancelled) = run_local(
            conns.clone(),
            journal.clone(),
            specs,
            listing,
            common,
            &run_opts,
            move |e: Engine| e.with_fingerprint(fp),
        )
        .await?;
        if cancelled {
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        summaries.push(s);
    }
    let copied = summaries
        .iter()
        .flat_map(|s| &s.files)
        // Files an earlier, interrupted run finished were copied then, not now.
        .filter(|f| f.status == Status::Ok && f.verified != Verification::Earlier)
        .count();
    let failed = summaries.iter().map(|s| s.files_failed).sum::<usize>();

    let (deleted, mut not_deleted) = (Vec::new(), Vec::new());
    let deleted = if a.delete && failed > 0 {
        for (loc, _) in &plan.deletes {
            not_deleted.push(NotDeleted {
                dst: loc.to_string(),
                reason: format!("{failed} copies failed: nothing is deleted"),
            });
        }
        deleted
    } else if a.delete {
        let (d, n) = barge_engine::sync::delete_extra(
            dst_store.as_ref(),
            &plan.deletes,
            a.max_delete,
            &sync_opts,
        )
        .await;
        not_deleted = n;
        d
    } else {
        deleted
    };

    if common.json {
        out!(
            "{}",
            SyncReport {
                copied,
                skipped,
                deleted: deleted.len(),
                failed,
                not_deleted: &not_deleted,
                dry_run: false,
                decisions: &plan.decisions,
                copies: summaries.iter().collect(),
            }
            .json()?
        );
    } else if !common.quiet {
        for s in &summaries {
            print_summary(s);
        }
        for d in &deleted {
            eprintln!("deleted {d}");
        }
    }
    for n in &not_deleted {
        eprintln!("not deleted {}: {}", n.dst, n.reason);
    }
    if !common.json && !common.quiet {
        eprintln!(
            "sync: {copied} copied, {skipped} unchanged, {} deleted{}{}",
            deleted.len(),
            if failed > 0 {
                format!(", {failed} FAILED")
            } else {
                String::new()
            },
            if not_deleted.is_empty() {
                String::new()
            } else {
                format!(", {} not deleted", not_deleted.len())
            }
        );
    }
    Ok(if failed == 0 && not_deleted.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}
