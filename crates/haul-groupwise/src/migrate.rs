//! Step 1 (pre-migration: `offiles/` only) and step 3 (the final full migration), each a
//! [`StepPlan`] made by [`plan`] and run by [`execute`].
//!
//! The rules, in the article's terms:
//! - The pre-migration copies only the BLOBs (`offiles/`) of the chosen backup (by default the
//!   newest by completion time). Run again, it moves only new BLOBs (the engine skips what the
//!   target holds).
//! - The full migration copies everything. `offiles/` moves incrementally, as a mirror: BLOBs
//!   gone from the backup are removed from the target. Every other directory the target holds
//!   from an earlier full run is renamed aside (`ofuser` to `ofuser.1`, ...) and copied anew;
//!   the engine reuses the chunks of the renamed copy locally instead of sending them.
//! - Nothing moves when the target lacks the space the step needs (the renamed-aside copies
//!   keep theirs); the run holds a lease on the target post office, so no other job writes
//!   into it meanwhile; a killed or failed full migration is continued by the next one (the
//!   directories it already renamed aside are not renamed again, and every verified chunk on
//!   the target is kept).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use haul_engine::job::{Endpoint, Job, JobEvent};
use haul_engine::remote::{LeaseGuard, Remote};
use haul_engine::{Progress, RenamedAside, Summary, TransferOptions};
use haul_state::{Level, Outcome, RunEnd, RunKind, RunStart, SourceLock, StateDb};
use serde::Serialize;

use crate::backup::{self, Backup};
use crate::clock::{self, format_bytes};
use crate::profile::{self, InProgress, Profile, StepRecord};
use crate::target::Target;
use crate::{GwError, OFFILES};

/// Which step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Step 1: `offiles/` only.
    Premigrate,
    /// Step 3: everything.
    Migrate,
}

impl StepKind {
    /// `premigrate` or `migrate`.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Premigrate => "premigrate",
            StepKind::Migrate => "migrate",
        }
    }
}

/// The space a step needs on the target, and what it has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpaceNeed {
    /// Bytes in what the step copies from the backup.
    pub source_bytes: u64,
    /// Of those, bytes the target already holds in place (its `offiles/`).
    pub in_place_bytes: u64,
    /// Bytes in the directories about to be renamed aside: they stay on the target, so
    /// their fresh copies need space of their own.
    pub kept_aside_bytes: u64,
    /// Bytes the step must be able to write.
    pub need_bytes: u64,
    /// Bytes free on the target.
    pub free_bytes: u64,
}

impl SpaceNeed {
    /// True when the target has room.
    pub fn fits(&self) -> bool {
        self.need_bytes <= self.free_bytes
    }
}

/// What a step will do: a value to print (a dry run) before [`execute`] runs it.
#[derive(Clone, Debug, Serialize)]
pub struct StepPlan {
    /// The step.
    pub kind: StepKind,
    /// The profile.
    pub profile: String,
    /// The backup it copies from.
    pub backup: Backup,
    /// The target, as a person reads it.
    pub target: String,
    /// Directories renamed aside and copied anew (full migration only).
    pub rename_aside: Vec<String>,
    /// Directories an interrupted full migration already renamed aside: their fresh copies
    /// are continued, not renamed again.
    pub continued: Vec<String>,
    /// Directories the target does not hold yet: copied fresh, nothing renamed.
    pub fresh: Vec<String>,
    /// True when this run continues an interrupted full migration.
    pub resumes: bool,
    /// The space it needs.
    pub space: SpaceNeed,
}

/// What a step reports while it runs.
#[derive(Clone, Debug)]
pub enum StepEvent {
    /// Something the operator should read (also written to the migration log).
    Note(String),
    /// The transfer started: its live counters, for a progress bar.
    Transfer(Arc<Progress>),
    /// What the engine reports.
    Job(Box<JobEvent>),
}

/// Where step events go.
pub type StepSink = Arc<dyn Fn(StepEvent) + Send + Sync>;

/// What a finished step did.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// The plan it ran.
    pub plan: StepPlan,
    /// The engine's summary of the transfer.
    pub summary: Summary,
    /// Directories renamed aside, as the engine reported them.
    pub renamed: Vec<RenamedAside>,
    /// Wall time of the whole step, seconds.
    pub duration_s: f64,
}

/// True if `name` is `<dir>.<N>` for one of `dirs` (a renamed-aside copy).
pub fn aside_of<'a>(name: &str, dirs: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let (base, digits) = name.rsplit_once('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    dirs.into_iter().find(|d| *d == base)
}

/// The top-level directories of the backup's post office besides `offiles/`.
fn backup_dirs(backup: &Backup) -> Result<Vec<String>, GwError> {
    let entries = std::fs::read_dir(&backup.path)
        .map_err(|e| GwError::io(&backup.path, "list the post office", e))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| GwError::io(&backup.path, "list the post office", e))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_dir && name != OFFILES {
            dirs.push(name);
        }
    }
    dirs.sort();
    Ok(dirs)
}

async fn local_size(dir: std::path::PathBuf) -> Result<u64, GwError> {
    if !dir.exists() {
        return Ok(0);
    }
    let size = tokio::task::spawn_blocking(move || haul_engine::local_ops::local_tree_size(&dir))
        .await
        .map_err(|e| GwError::Failed(format!("the size scan failed: {e}")))??;
    Ok(size.bytes)
}

/// Bytes in the tree `path` on the target (0 if nothing is there).
async fn target_size(ops: &mut Remote, path: &str) -> Result<u64, GwError> {
    Ok(match ops.stat(path).await? {
        Some(info) if info.kind == "dir" => ops.du(path).await?.bytes,
        _ => 0,
    })
}

/// Works out what step `kind` would do for `profile` from backup `tag` (default: the
/// newest): which backup, which directories are renamed aside, the space it needs. Changes
/// nothing.
pub async fn plan(
    profile: &Profile,
    target: &Target,
    kind: StepKind,
    tag: Option<&str>,
) -> Result<StepPlan, GwError> {
    let backup = backup::choose(&profile.backups, &profile.po, tag)?;
    let offiles_bytes = local_size(backup.path.join(OFFILES)).await?;
    let mut ops = target.ops(None).await?;
    let planned = async {
        let free_bytes = ops.df().await?.free_bytes;
        let in_place_bytes = target_size(&mut ops, &target.join(OFFILES)).await?;
        let mut plan = StepPlan {
            kind,
            profile: profile.name.clone(),
            backup: backup.clone(),
            target: target.describe(),
            rename_aside: Vec::new(),
            continued: Vec::new(),
            fresh: Vec::new(),
            resumes: false,
            space: SpaceNeed {
                source_bytes: offiles_bytes,
                in_place_bytes,
                free_bytes,
                ..SpaceNeed::default()
            },
        };
        if kind == StepKind::Migrate {
            plan.space.source_bytes = local_size(backup.path.clone()).await?;
            let on_target = match ops.stat(target.po_path()).await? {
                Some(info) if info.kind == "dir" => ops.ls(target.po_path()).await?,
                _ => Vec::new(),
            };
            let in_progress = profile.state.in_progress.as_ref();
            plan.resumes = in_progress.is_some();
            for dir in backup_dirs(&backup)? {
                if !on_target.iter().any(|i| i.name == dir && i.kind == "dir") {
                    plan.fresh.push(dir);
                    continue;
                }
                let asides = on_target
                    .iter()
                    .filter(|i| aside_of(&i.name, [dir.as_str()]).is_some())
                    .count();
                // The interrupted run renamed it aside already, or made it fresh itself.
                let already = in_progress.is_some_and(|p| {
                    p.absent_before.contains(&dir)
                        || p.asides_before
                            .get(&dir)
                            .is_some_and(|before| asides > *before)
                });
                if already {
                    plan.continued.push(dir);
                } else {
                    plan.space.kept_aside_bytes +=
                        target_size(&mut ops, &target.join(&dir)).await?;
                    plan.rename_aside.push(dir);
                }
            }
        }
        // Everything the step copies needs room, except the BLOBs already in place; the
        // renamed-aside copies keep their space (already counted as used).
        plan.space.need_bytes = plan
            .space
            .source_bytes
            .saturating_sub(plan.space.in_place_bytes);
        Ok::<_, GwError>(plan)
    }
    .await;
    ops.close().await;
    planned
}

/// Appends to the profile's migration log and tells the operator.
fn note(db: &StateDb, profile: &str, level: Level, message: &str, events: &StepSink) {
    let _ = db.log(None, Some(profile), level, message);
    events(StepEvent::Note(message.to_string()));
}

/// Runs `command` with `sh -c` (the article's step 2, e.g. stopping the DR agent).
async fn run_before(command: &str) -> Result<(), GwError> {
    let owned = command.to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(owned)
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r)
    .map_err(|e| GwError::BeforeFailed {
        command: command.into(),
        status: "could not start".into(),
        stderr: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(GwError::BeforeFailed {
        command: command.into(),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// The options of the step's transfer.
fn options(plan: &StepPlan, holder: &str) -> Result<TransferOptions, GwError> {
    let mut options = TransferOptions {
        holder: Some(holder.to_string()),
        ..TransferOptions::default()
    };
    match plan.kind {
        StepKind::Premigrate => {
            let only_blobs = haul_manifest::Filter::new()
                .include(format!("/{OFFILES}/"))
                .and_then(|f| f.exclude("/*"))
                .map_err(|e| GwError::Invalid(e.to_string()))?;
            options.filter = Some(Arc::new(only_blobs));
        }
        StepKind::Migrate => {
            options.delete = true;
            options.rename_aside = plan
                .rename_aside
                .iter()
                .map(|d| d.as_bytes().to_vec())
                .collect();
        }
    }
    Ok(options)
}

/// Runs `plan`: refuses if the target lacks the space, runs `before` (stopping if it fails),
/// holds a lease on the target post office, copies, and records the step in the profile and
/// its migration log.
pub async fn execute(
    db: &StateDb,
    target: &Target,
    plan: StepPlan,
    before: Option<&str>,
    events: StepSink,
) -> Result<StepReport, GwError> {
    let name = plan.profile.clone();
    let step = plan.kind.name();
    let started_ms = clock::now_ms();
    let backup = &plan.backup;
    let state_dir = db.path().parent().unwrap_or(std::path::Path::new("."));
    let _lock = SourceLock::acquire(
        state_dir,
        &backup.path,
        &format!("groupwise {step} of profile {name}"),
    )?;
    note(
        db,
        &name,
        Level::Info,
        &format!(
            "{step} started: backup {} (completed {}) to {}{}",
            backup.tag,
            clock::format_utc(backup.completed * 1000),
            plan.target,
            if plan.resumes {
                ", continuing the interrupted full migration"
            } else {
                ""
            }
        ),
        &events,
    );
    if !plan.space.fits() {
        let e = GwError::NoSpace {
            need: plan.space.need_bytes,
            free: plan.space.free_bytes,
            kept: plan.space.kept_aside_bytes,
        };
        note(
            db,
            &name,
            Level::Error,
            &format!("{step} refused: {e}"),
            &events,
        );
        return Err(e);
    }
    if let Some(command) = before {
        note(
            db,
            &name,
            Level::Info,
            &format!("running --before {command:?}"),
            &events,
        );
        if let Err(e) = run_before(command).await {
            note(
                db,
                &name,
                Level::Error,
                &format!("{step} stopped: {e}"),
                &events,
            );
            return Err(e);
        }
    }
    let holder = format!("groupwise:{name}");
    let lease = async {
        let ops = target.ops(Some(&holder)).await?;
        let purpose = format!("haul groupwise {step} of profile {name}");
        Ok::<_, GwError>(
            LeaseGuard::hold_on(
                ops,
                target.po_path(),
                &holder,
                &purpose,
                Duration::from_secs(30),
            )
            .await?,
        )
    }
    .await;
    let lease = match lease {
        Ok(lease) => lease,
        Err(e) => {
            note(
                db,
                &name,
                Level::Error,
                &format!("{step} stopped: {e}"),
                &events,
            );
            return Err(e);
        }
    };
    if plan.kind == StepKind::Migrate {
        let mut profile = profile::get(db, &name)?;
        if profile.state.in_progress.is_none() {
            profile.state.in_progress = Some(InProgress {
                backup: backup.tag.clone(),
                started_ms,
                asides_before: aside_counts(target, &plan).await?,
                absent_before: plan.fresh.clone(),
            });
            profile::save(db, &profile)?;
        }
    }
    if !plan.rename_aside.is_empty() {
        note(
            db,
            &name,
            Level::Info,
            &format!(
                "renaming aside and copying anew: {}",
                plan.rename_aside.join(", ")
            ),
            &events,
        );
    }
    let run = db
        .start_run(&RunStart {
            kind: RunKind::Other(format!("groupwise.{step}")),
            source: backup.path.display().to_string(),
            destination: plan.target.clone(),
            profile: Some(name.clone()),
        })
        .ok();
    let job = Job::new(Endpoint::Local(backup.path.clone()), target.endpoint())
        .options(options(&plan, &holder)?)
        .retries(3, Duration::from_secs(2));
    events(StepEvent::Transfer(job.progress()));
    let sink = events.clone();
    let result = job
        .run(move |event| sink(StepEvent::Job(Box::new(event))))
        .await;
    let released = lease.release().await;
    let ended_ms = clock::now_ms();
    let duration_s = (ended_ms - started_ms) as f64 / 1000.0;
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            if let Some(run) = run {
                let outcome = match e.exit_code() {
                    3 => Outcome::Paused,
                    _ => Outcome::Failed,
                };
                let _ = db.finish_run(
                    run,
                    &RunEnd {
                        bytes: 0,
                        files: 0,
                        chunks: 0,
                        outcome,
                        error: Some(e.to_string()),
                    },
                );
            }
            note(
                db,
                &name,
                Level::Error,
                &format!(
                    "{step} stopped after {}: {e}; run `haul groupwise {step} {name}` again to \
                     continue from the verified chunks",
                    clock::format_duration(duration_s)
                ),
                &events,
            );
            return Err(e.into());
        }
    };
    if let Some(run) = run {
        let _ = db.finish_run(
            run,
            &RunEnd {
                bytes: summary.bytes_sent,
                files: summary.files_transferred,
                chunks: summary.chunks_sent,
                outcome: if summary.errors.is_empty() {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                },
                error: summary
                    .errors
                    .first()
                    .map(|p| format!("{}: {}", p.path, p.message)),
            },
        );
    }
    record(db, &name, &plan, &summary, started_ms, ended_ms, &events)?;
    if let Err(e) = released {
        note(
            db,
            &name,
            Level::Warn,
            &format!(
                "the lease on the target was not released cleanly ({e}); it expires by itself"
            ),
            &events,
        );
    }
    if !summary.errors.is_empty() {
        return Err(GwError::Failed(format!(
            "{} files could not be copied (see the log: `haul groupwise log {name}`); run \
             `haul groupwise {step} {name}` again",
            summary.errors.len()
        )));
    }
    Ok(StepReport {
        renamed: summary.renamed_aside.clone(),
        plan,
        summary,
        duration_s,
    })
}

/// How many aside copies each directory about to be renamed has now.
async fn aside_counts(
    target: &Target,
    plan: &StepPlan,
) -> Result<BTreeMap<String, usize>, GwError> {
    let mut ops = target.ops(None).await?;
    let listed = match ops.stat(target.po_path()).await {
        Ok(Some(_)) => ops.ls(target.po_path()).await,
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(e),
    };
    ops.close().await;
    let listed = listed?;
    Ok(plan
        .rename_aside
        .iter()
        .chain(&plan.continued)
        .map(|dir| {
            let n = listed
                .iter()
                .filter(|i| aside_of(&i.name, [dir.as_str()]).is_some())
                .count();
            (dir.clone(), n)
        })
        .collect())
}

/// Writes what the step did to the migration log and the profile.
fn record(
    db: &StateDb,
    name: &str,
    plan: &StepPlan,
    summary: &Summary,
    started_ms: i64,
    ended_ms: i64,
    events: &StepSink,
) -> Result<(), GwError> {
    let step = plan.kind.name();
    for problem in &summary.errors {
        note(
            db,
            name,
            Level::Error,
            &format!("could not copy {}: {}", problem.path, problem.message),
            events,
        );
    }
    note(
        db,
        name,
        Level::Info,
        &format!(
            "copied {} files, {} ({} of them already up to date); {} crossed the network, {} \
             reused from what the target held",
            summary.files_transferred,
            format_bytes(summary.bytes_total),
            summary.files_unchanged,
            format_bytes(summary.bytes_sent),
            format_bytes(summary.bytes_reused),
        ),
        events,
    );
    for aside in &summary.renamed_aside {
        note(
            db,
            name,
            Level::Info,
            &format!("renamed aside: {} -> {}", aside.from, aside.to),
            events,
        );
    }
    if summary.deleted_total > 0 {
        const SHOWN: usize = 20;
        let mut shown: Vec<&str> = summary
            .deleted
            .iter()
            .take(SHOWN)
            .map(|s| s.as_str())
            .collect();
        if summary.deleted.len() > SHOWN {
            shown.push("...");
        }
        note(
            db,
            name,
            Level::Info,
            &format!(
                "removed {} entries gone from the backup: {}",
                summary.deleted_total,
                shown.join(", ")
            ),
            events,
        );
    }
    let mut profile = profile::get(db, name)?;
    let step_record = StepRecord {
        backup: plan.backup.tag.clone(),
        started_ms: match (&plan.kind, &profile.state.in_progress) {
            (StepKind::Migrate, Some(p)) => p.started_ms.min(started_ms),
            _ => started_ms,
        },
        ended_ms,
        bytes_total: summary.bytes_total,
        bytes_sent: summary.bytes_sent,
        files: summary.files_total,
        deleted: summary.deleted_total,
    };
    let ok = summary.errors.is_empty();
    match plan.kind {
        StepKind::Premigrate if ok => profile.state.last_premigrate = Some(step_record.clone()),
        StepKind::Migrate if ok => {
            // Timed from this run's start: a continued run's earlier attempts are not a trial
            // of the migration's length.
            profile.state.last_migrate = Some(StepRecord {
                started_ms,
                ..step_record.clone()
            });
            profile.state.in_progress = None;
        }
        _ => {}
    }
    for aside in &summary.renamed_aside {
        let rel = aside.to.rsplit('/').next().unwrap_or(&aside.to).to_string();
        profile.state.asides.insert(rel, ended_ms);
    }
    profile::save(db, &profile)?;
    let level = if ok { Level::Info } else { Level::Error };
    note(
        db,
        name,
        level,
        &format!(
            "{step} {} in {} (backup {})",
            if ok { "finished" } else { "ended with errors" },
            clock::format_duration((ended_ms - started_ms) as f64 / 1000.0),
            plan.backup.tag
        ),
        events,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::aside_of;

    #[test]
    fn aside_copies_are_name_dot_number() {
        assert_eq!(aside_of("ofuser.1", ["ofuser", "ofmsg"]), Some("ofuser"));
        assert_eq!(aside_of("ofmsg.12", ["ofuser", "ofmsg"]), Some("ofmsg"));
        assert_eq!(aside_of("ofuser", ["ofuser"]), None);
        assert_eq!(aside_of("ofuser.x", ["ofuser"]), None);
        assert_eq!(aside_of("wphost.db", ["wphost"]), None);
        assert_eq!(aside_of("other.1", ["ofuser"]), None);
    }
}
