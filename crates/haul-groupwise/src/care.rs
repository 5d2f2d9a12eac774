//! The steps around the copy: the connectivity test before it, the estimate, the cleanup of
//! renamed-aside duplicates after it, and the migration log.

use haul_engine::EngineError;
use haul_state::{Level, LogRecord, StateDb};
use serde::Serialize;

use crate::backup;
use crate::clock::{self, format_bytes, format_duration};
use crate::migrate::{self, SpaceNeed, StepKind, aside_of};
use crate::profile::{self, Profile};
use crate::target::Target;
use crate::{GwError, OFFILES};

/// What the connectivity test found.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// The target.
    pub target: String,
    /// The host (or directory) could be reached.
    pub reachable: bool,
    /// The credentials were accepted.
    pub credentials: bool,
    /// A test file could be created, seen and removed where the post office goes.
    pub write_test: bool,
    /// The step the space is checked for (the pre-migration until one has finished).
    pub next_step: Option<StepKind>,
    /// The space it needs against what the target has.
    pub space: Option<SpaceNeed>,
    /// Everything that failed, with what to do.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// True when everything passed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The article's connectivity test: reach the target, authenticate, create and remove a test
/// file, and report free space against the next step's need.
pub async fn check(db: &StateDb, profile: &Profile, target: &Target) -> CheckReport {
    let mut report = CheckReport {
        target: target.describe(),
        reachable: false,
        credentials: false,
        write_test: false,
        next_step: None,
        space: None,
        problems: Vec::new(),
    };
    let mut ops = match target.ops(None).await {
        Ok(ops) => ops,
        Err(GwError::Engine(e @ EngineError::Refused { .. })) => {
            report.reachable = true;
            report.problems.push(format!(
                "the target refused the credentials: {e}; check the token file (`profile \
                 set-target` changes it)"
            ));
            return finish(db, profile, report);
        }
        Err(e) => {
            report.problems.push(format!(
                "cannot reach the target: {e}; is `haul serve` running there and the port open?"
            ));
            return finish(db, profile, report);
        }
    };
    report.reachable = true;
    report.credentials = true;
    let probe_dir = match ops.stat(target.po_path()).await {
        Ok(Some(info)) if info.kind == "dir" => target.po_path().to_string(),
        _ => target.parent_path().to_string(),
    };
    let probe = match probe_dir.as_str() {
        "" => format!("haul-check-{}.tmp", std::process::id()),
        dir => format!("{dir}/haul-check-{}.tmp", std::process::id()),
    };
    let written = async {
        ops.put(&probe, b"haul groupwise check\n").await?;
        let seen = ops.stat(&probe).await?.is_some();
        ops.rm(&probe).await?;
        let gone = ops.stat(&probe).await?.is_none();
        Ok::<_, EngineError>(seen && gone)
    }
    .await;
    match written {
        Ok(true) => report.write_test = true,
        Ok(false) => report.problems.push(format!(
            "the test file {probe} did not appear and go away as asked"
        )),
        Err(e) => report.problems.push(format!(
            "cannot create and remove a test file ({probe}): {e}; the token needs write scope \
             and the directory must be writable"
        )),
    }
    ops.close().await;
    let next = if profile.state.last_premigrate.is_none() && profile.state.last_migrate.is_none() {
        StepKind::Premigrate
    } else {
        StepKind::Migrate
    };
    report.next_step = Some(next);
    match migrate::plan(profile, target, next, None).await {
        Ok(plan) => {
            if !plan.space.fits() {
                report.problems.push(format!(
                    "not enough space for the {}: {} needed, {} free; expand the storage",
                    next.name(),
                    format_bytes(plan.space.need_bytes),
                    format_bytes(plan.space.free_bytes)
                ));
            }
            report.space = Some(plan.space);
        }
        Err(e) => report
            .problems
            .push(format!("cannot work out the space needed: {e}")),
    }
    finish(db, profile, report)
}

fn finish(db: &StateDb, profile: &Profile, report: CheckReport) -> CheckReport {
    let message = if report.ok() {
        let space = report.space.as_ref().map_or(String::new(), |s| {
            format!(
                "; {} free, the {} needs {}",
                format_bytes(s.free_bytes),
                report.next_step.map_or("next step", StepKind::name),
                format_bytes(s.need_bytes)
            )
        });
        format!(
            "check passed: {} reachable, test file created and removed{space}",
            report.target
        )
    } else {
        format!(
            "check FAILED for {}: {}",
            report.target,
            report.problems.join("; ")
        )
    };
    let level = if report.ok() {
        Level::Info
    } else {
        Level::Error
    };
    let _ = db.log(None, Some(&profile.name), level, &message);
    report
}

/// One renamed-aside duplicate on the target.
#[derive(Clone, Debug, Serialize)]
pub struct AsideCopy {
    /// Its path in the post office (`ofuser.1`).
    pub path: String,
    /// The directory it is an older copy of.
    pub of: String,
    /// Bytes in it.
    pub bytes: u64,
    /// Files in it.
    pub files: u64,
    /// When it was renamed aside (unix ms), when a migration of this profile did it; else
    /// its own modification time.
    pub since_ms: i64,
}

/// What [`cleanup`] found and did.
#[derive(Clone, Debug, Serialize)]
pub struct CleanupReport {
    /// The duplicates.
    pub asides: Vec<AsideCopy>,
    /// Bytes in them.
    pub bytes: u64,
    /// True if they were deleted.
    pub deleted: bool,
}

/// Lists the renamed-aside duplicates on the target, and with `delete` removes them.
pub async fn cleanup(
    db: &StateDb,
    profile: &Profile,
    target: &Target,
    delete: bool,
) -> Result<CleanupReport, GwError> {
    let holder = format!("groupwise:{}", profile.name);
    let mut ops = target.ops(Some(&holder)).await?;
    let result = async {
        let listed = match ops.stat(target.po_path()).await? {
            Some(info) if info.kind == "dir" => ops.ls(target.po_path()).await?,
            _ => Vec::new(),
        };
        let dirs: Vec<String> = listed
            .iter()
            .filter(|i| i.kind == "dir")
            .map(|i| i.name.clone())
            .collect();
        let mut asides = Vec::new();
        for item in listed.iter().filter(|i| i.kind == "dir") {
            let Some(of) = aside_of(&item.name, dirs.iter().map(String::as_str)) else {
                continue;
            };
            if of == OFFILES {
                continue;
            }
            let size = ops.du(&target.join(&item.name)).await?;
            asides.push(AsideCopy {
                path: item.name.clone(),
                of: of.to_string(),
                bytes: size.bytes,
                files: size.files,
                since_ms: profile
                    .state
                    .asides
                    .get(&item.name)
                    .copied()
                    .unwrap_or(item.mtime_sec * 1000),
            });
        }
        if delete {
            for aside in &asides {
                ops.rm(&target.join(&aside.path)).await?;
            }
        }
        Ok::<_, GwError>(asides)
    }
    .await;
    ops.close().await;
    let asides = result?;
    let bytes = asides.iter().map(|a| a.bytes).sum();
    if delete {
        let mut stored = profile::get(db, &profile.name)?;
        for aside in &asides {
            stored.state.asides.remove(&aside.path);
        }
        profile::save(db, &stored)?;
        let names: Vec<&str> = asides.iter().map(|a| a.path.as_str()).collect();
        db.log(
            None,
            Some(&profile.name),
            Level::Info,
            &format!(
                "cleanup deleted {} renamed-aside duplicates ({}): {}",
                asides.len(),
                format_bytes(bytes),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )?;
    }
    Ok(CleanupReport {
        asides,
        bytes,
        deleted: delete,
    })
}

/// One part of the estimate.
#[derive(Clone, Debug, Serialize)]
pub struct EstimatePart {
    /// What it is.
    pub name: String,
    /// Seconds.
    pub seconds: f64,
    /// Where the number comes from.
    pub source: String,
}

/// The migration time estimate: full migration + backup + post migration + buffer.
#[derive(Clone, Debug, Serialize)]
pub struct EstimateReport {
    /// The parts, in the article's order (a, b, c).
    pub parts: Vec<EstimatePart>,
    /// True when the full-migration time is a projection, not a measured trial.
    pub projection: bool,
    /// The buffer, percent of the sum.
    pub buffer_pct: f64,
    /// The buffer, seconds.
    pub buffer_s: f64,
    /// Everything, seconds.
    pub total_s: f64,
}

/// What the estimate is asked for.
#[derive(Clone, Debug, Default)]
pub struct EstimateInput {
    /// The backup's duration, seconds (default: the newest backup's recorded duration).
    pub backup_time_s: Option<f64>,
    /// The post-migration steps' duration, seconds (default 0, said so).
    pub post_time_s: Option<f64>,
    /// The buffer, percent (default 20).
    pub buffer_pct: Option<f64>,
}

/// The article's planning step 4: (a) the last full-migration trial, or a projection from the
/// pre-migration's measured throughput; (b) the backup's time; (c) the post-migration time;
/// (d) their sum, plus a buffer.
pub async fn estimate(
    profile: &Profile,
    target: &Target,
    input: &EstimateInput,
) -> Result<EstimateReport, GwError> {
    let mut parts = Vec::new();
    let mut projection = false;
    match &profile.state.last_migrate {
        Some(last) => parts.push(EstimatePart {
            name: "full migration".into(),
            seconds: last.duration_s(),
            source: format!(
                "the last full migration (backup {}, {})",
                last.backup,
                clock::format_utc(last.started_ms)
            ),
        }),
        None => {
            let pre = profile.state.last_premigrate.as_ref().ok_or_else(|| {
                GwError::Invalid(format!(
                    "nothing measured yet for profile {}: run `haul groupwise premigrate {}` (or \
                     a trial `migrate`) first",
                    profile.name, profile.name
                ))
            })?;
            let rate = pre.bytes_total as f64 / pre.duration_s().max(0.001);
            let plan = migrate::plan(profile, target, StepKind::Migrate, None).await?;
            projection = true;
            parts.push(EstimatePart {
                name: "full migration (projection)".into(),
                seconds: plan.space.need_bytes as f64 / rate.max(1.0),
                source: format!(
                    "PROJECTION: {} still to move at {}/s, the rate the pre-migration of {} \
                     measured; run a trial `migrate` for a measured time",
                    format_bytes(plan.space.need_bytes),
                    format_bytes(rate as u64),
                    pre.backup
                ),
            });
        }
    }
    let newest = backup::choose(&profile.backups, &profile.po, None).ok();
    let (backup_s, backup_source) = match (input.backup_time_s, &newest) {
        (Some(s), _) => (s, "given (--backup-time)".to_string()),
        (None, Some(b)) if b.duration_s.is_some() => (
            b.duration_s.unwrap_or(0.0),
            format!("the recorded duration of backup {}", b.tag),
        ),
        _ => (0.0, "unknown: give it with --backup-time".to_string()),
    };
    parts.push(EstimatePart {
        name: "post office backup".into(),
        seconds: backup_s,
        source: backup_source,
    });
    let (post_s, post_source) = match input.post_time_s {
        Some(s) => (s, "given (--post-time)".to_string()),
        None => (0.0, "not given: add it with --post-time".to_string()),
    };
    parts.push(EstimatePart {
        name: "post migration".into(),
        seconds: post_s,
        source: post_source,
    });
    let buffer_pct = input.buffer_pct.unwrap_or(20.0);
    let sum: f64 = parts.iter().map(|p| p.seconds).sum();
    let buffer_s = sum * buffer_pct / 100.0;
    Ok(EstimateReport {
        parts,
        projection,
        buffer_pct,
        buffer_s,
        total_s: sum + buffer_s,
    })
}

impl std::fmt::Display for EstimateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (letter, part) in ["a", "b", "c"].iter().zip(&self.parts) {
            writeln!(
                f,
                "{letter}) {:<28} {:>10}   {}",
                part.name,
                format_duration(part.seconds),
                part.source
            )?;
        }
        writeln!(
            f,
            "   {:<28} {:>10}   {}% of a+b+c",
            "buffer",
            format_duration(self.buffer_s),
            self.buffer_pct
        )?;
        write!(
            f,
            "d) {:<28} {:>10}{}",
            "TOTAL MIGRATION TIME",
            format_duration(self.total_s),
            if self.projection {
                "   (includes a projection)"
            } else {
                ""
            }
        )
    }
}

/// The profile's migration log, oldest first (the latest `limit` lines).
pub fn log(db: &StateDb, name: &str, limit: usize) -> Result<Vec<LogRecord>, GwError> {
    profile::get(db, name)?;
    Ok(db.logs(Some(name), limit)?)
}

/// One log line as text: `2024-05-28 22:00:00 UTC  info   message`.
pub fn log_line(record: &LogRecord) -> String {
    format!(
        "{}  {:<5}  {}",
        clock::format_utc(record.at),
        record.level.as_str(),
        record.message
    )
}
