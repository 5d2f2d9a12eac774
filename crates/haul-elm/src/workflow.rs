//! The workflow's steps: migrate (preconditions, snapshot, lease, Phase One), proceed
//! (Phase Two), resume, cancel, revert, and the task queries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use haul_state::{Level, SourceLock, StateDb};

use crate::error::ElmError;
use crate::layout;
use crate::run::Runner;
use crate::target::{Connected, TargetSpec};
use crate::task::{Check, Mode, Phase, State, Task, Tasks, now_ms};
use crate::{Elm, ElmEvent, Events, MigrateRequest, RunOptions};

/// How long `cancel` waits for the process running a task to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(60);

fn check(name: &str, pass: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        pass,
        detail: detail.into(),
    }
}

impl Elm {
    /// Opens (creating) the state database in `state_dir`.
    pub fn open(state_dir: PathBuf, options: RunOptions) -> Result<Elm, ElmError> {
        let db = Arc::new(StateDb::open(&state_dir)?);
        Ok(Elm {
            db,
            state_dir,
            options,
        })
    }

    fn tasks_db(&self) -> Tasks<'_> {
        Tasks::new(&self.db)
    }

    /// Every migration task, by number.
    pub fn tasks(&self) -> Result<Vec<Task>, ElmError> {
        self.tasks_db().all()
    }

    /// Task `id`.
    pub fn task(&self, id: &str) -> Result<Task, ElmError> {
        self.tasks_db().get(id)
    }

    /// Writes task `id`'s state and log to `file`, a tar archive holding
    /// `task-<id>/state.json` and `task-<id>/log.txt`. Returns the log lines written.
    pub fn export_logs(&self, id: &str, file: &Path) -> Result<usize, ElmError> {
        let task = self.task(id)?;
        let lines = self
            .db
            .logs(Some(&Task::log_profile(id)), usize::MAX >> 1)?;
        let mut log = String::new();
        for l in &lines {
            log.push_str(&format!("{} {:5} {}\n", l.at, l.level.as_str(), l.message));
        }
        let state = serde_json::to_vec_pretty(&task).expect("tasks serialize");
        let (state_name, log_name) = (
            format!("task-{id}/state.json"),
            format!("task-{id}/log.txt"),
        );
        crate::export::write_tar(
            file,
            &[(&state_name, state), (&log_name, log.into_bytes())],
            now_ms() / 1000,
        )?;
        Ok(lines.len())
    }

    /// Starts a migration: records the task, checks every precondition (all of them, each
    /// reported as an [`ElmEvent::Check`]) before anything is copied, takes the lease on
    /// the target and its pre-migration snapshot, and runs Phase One to "awaiting
    /// confirmation". An earlier task from the same source into the same target that
    /// stopped in Phase One (cancelled, failed, or its process gone) is continued instead.
    pub async fn migrate(&self, req: MigrateRequest, events: Events) -> Result<Task, ElmError> {
        let source = std::fs::canonicalize(&req.source).map_err(|e| {
            ElmError::Invalid(format!(
                "the source appliance {} cannot be read ({e}): give its directory",
                req.source.display()
            ))
        })?;
        let tasks = self.tasks_db();
        let earlier = tasks.all()?.into_iter().find(|t| {
            t.source == source
                && t.target.url == req.target_ref.url
                && t.phase == Phase::One
                && match t.state {
                    State::Cancelled | State::Failed { .. } => true,
                    State::Running | State::Paused { .. } => !t.process_alive(),
                    _ => false,
                }
        });
        if let Some(t) = earlier {
            events(ElmEvent::Task {
                id: t.id.clone(),
                resumed: true,
            });
            tasks.log(
                &t.id,
                Level::Info,
                "continued by a new `migrate` of the same source and target",
            );
            return self.resume_task(t, &req.target, events).await;
        }
        let id = tasks.next_id()?;
        let mut task = Task {
            id: id.clone(),
            source: source.clone(),
            target: req.target_ref.clone(),
            mode: req.mode,
            share: req.share.clone(),
            source_share: layout::read_share(&source)?,
            phase: Phase::Preflight,
            state: State::Checking,
            checks: Vec::new(),
            snapshot: None,
            holder: format!("haul-elm-task-{id}"),
            layers_total: 0,
            layers_done: 0,
            bytes_total: 0,
            bytes_done: 0,
            bytes_sent: 0,
            rate_bps: 0.0,
            eta_s: None,
            passes: 0,
            errors: Vec::new(),
            warnings: Vec::new(),
            pid: Some(std::process::id()),
            created_ms: now_ms(),
            finished_ms: None,
        };
        tasks.put(&task)?;
        tasks.log(
            &id,
            Level::Info,
            &format!(
                "{} migration of {} to {} recorded",
                req.mode.as_str(),
                source.display(),
                req.target_ref.url
            ),
        );
        events(ElmEvent::Task {
            id: id.clone(),
            resumed: false,
        });
        let (checks, lock, conn) = self.preflight(&task, &req.target).await;
        for c in &checks {
            events(ElmEvent::Check(c.clone()));
            let level = if c.pass { Level::Info } else { Level::Error };
            let verdict = if c.pass { "pass" } else { "FAIL" };
            tasks.log(
                &id,
                level,
                &format!("check {}: {verdict}: {}", c.name, c.detail),
            );
        }
        task.checks = checks.clone();
        let failed: Vec<Check> = checks.into_iter().filter(|c| !c.pass).collect();
        if !failed.is_empty() {
            if let Some(conn) = &conn {
                release_lease(conn, &task.holder).await;
            }
            task.state = State::Refused;
            task.phase = Phase::Closed;
            task.pid = None;
            task.finished_ms = Some(now_ms());
            tasks.put(&task)?;
            events(ElmEvent::State {
                state: task.state.describe(),
            });
            return Err(ElmError::Preconditions { task: id, failed });
        }
        let (Some(lock), Some(conn)) = (lock, conn) else {
            unreachable!("every check passed, so the lock and the target are held");
        };
        tasks.put(&task)?;
        let conn = Arc::new(conn);
        let mut runner = Runner::start(self, task, conn.clone(), events.clone());
        if let Err(e) = self.snapshot_target(&runner, &events).await {
            runner.stop_ticker();
            release_lease(&conn, &runner.snapshot().holder).await;
            runner.update(|t| t.errors.push(e.to_string()))?;
            runner.finish(
                State::Failed {
                    error: e.to_string(),
                },
                Phase::One,
            )?;
            return Err(e);
        }
        if runner.snapshot().source.join(layout::CERTS).exists() {
            let message = "the source has a custom certificate (config/certs): it is not \
                           migrated; recreate it on the target after the migration"
                .to_string();
            runner.update(|t| t.warnings.push(message.clone()))?;
            runner.log(Level::Warn, &message);
            events(ElmEvent::Warning { message });
        }
        let result = self.phase_one(runner).await;
        drop(lock);
        result
    }

    /// The preconditions; every one is checked (none skipped because another failed),
    /// except those that need the target when it cannot be reached.
    async fn preflight(
        &self,
        task: &Task,
        target: &TargetSpec,
    ) -> (Vec<Check>, Option<SourceLock>, Option<Connected>) {
        let mut checks = Vec::new();
        let source = &task.source;
        // This source: no other migration running (a process holding its lock) or open.
        let purpose = format!("haul elm migration task {}", task.id);
        let lock = SourceLock::acquire(&self.state_dir, source, &purpose);
        let others: Vec<String> = self
            .tasks()
            .unwrap_or_default()
            .into_iter()
            .filter(|t| {
                t.id != task.id
                    && &t.source == source
                    && t.state.is_open()
                    && (t.state != State::Checking || t.process_alive())
            })
            .map(|t| format!("task {} ({})", t.id, t.describe()))
            .collect();
        let lock = match lock {
            Ok(lock) if others.is_empty() => {
                checks.push(check(
                    "no other migration from this source",
                    true,
                    format!("{} is not being migrated by another task", source.display()),
                ));
                Some(lock)
            }
            Ok(_) => {
                checks.push(check(
                    "no other migration from this source",
                    false,
                    format!(
                        "{} is already being migrated by {}: let it finish, or cancel it \
                         (`haul elm cancel ID`)",
                        source.display(),
                        others.join(", ")
                    ),
                ));
                None
            }
            Err(e) => {
                checks.push(check(
                    "no other migration from this source",
                    false,
                    e.to_string(),
                ));
                None
            }
        };
        // The share.
        let share_check = match (task.mode, &task.share, &task.source_share) {
            (Mode::Copy, None, _) => check(
                "network file share",
                false,
                "a copy needs --share: the target must get a network file share of its own \
                 (two appliances never share one)",
            ),
            (Mode::Copy, Some(new), Some(old)) if new.trim() == old.trim() => check(
                "network file share",
                false,
                format!(
                    "--share {new} is the source's own share: two appliances must never use \
                     the same share; give the target a different one"
                ),
            ),
            (Mode::Copy, Some(new), _) => check(
                "network file share",
                true,
                format!("the target gets its own share {new}"),
            ),
            (Mode::Move, _, Some(old)) => check(
                "network file share",
                true,
                format!("the target takes over the source's share {old}"),
            ),
            (Mode::Move, _, None) => check(
                "network file share",
                false,
                format!(
                    "the source has no {} to move: use --mode copy with --share",
                    layout::SHARE
                ),
            ),
        };
        checks.push(share_check);
        let used = layout::usage(source, false).map(|u| u.allocated);
        // The target.
        let unreachable = |checks: &mut Vec<Check>, why: &str| {
            for name in [
                "target not marked non-recoverable",
                "target has no layers",
                "target free space",
                "target held for this task",
            ] {
                checks.push(check(name, false, format!("not checked: {why}")));
            }
        };
        let conn = match Connected::open(target, &task.holder).await {
            Ok(c) => c,
            Err(e) => {
                checks.push(check(
                    "target reachable, credentials accepted",
                    false,
                    e.to_string(),
                ));
                unreachable(&mut checks, "the target is unreachable");
                return (checks, lock, None);
            }
        };
        let mut remote = match conn.remote().await {
            Ok(r) => r,
            Err(e) => {
                checks.push(check(
                    "target reachable, credentials accepted",
                    false,
                    format!("{e}; check the address, --fingerprint and --token-file"),
                ));
                unreachable(&mut checks, "the target is unreachable");
                return (checks, lock, Some(conn));
            }
        };
        match remote.stat(&conn.path).await {
            Ok(Some(info)) if info.kind == "dir" => checks.push(check(
                "target reachable, credentials accepted",
                true,
                format!(
                    "{} answered; /{} is a directory",
                    task.target.url, conn.path
                ),
            )),
            Ok(_) => {
                checks.push(check(
                    "target reachable, credentials accepted",
                    false,
                    format!(
                        "the host answered but /{} is not a directory there: create the \
                         target appliance's directory first",
                        conn.path
                    ),
                ));
                unreachable(&mut checks, "the target directory is missing");
                remote.close().await;
                return (checks, lock, Some(conn));
            }
            Err(e) => {
                checks.push(check(
                    "target reachable, credentials accepted",
                    false,
                    e.to_string(),
                ));
                unreachable(&mut checks, "the target cannot be queried");
                remote.close().await;
                return (checks, lock, Some(conn));
            }
        }
        // Non-recoverable: the marker on the target, or a task that left it so.
        let marked = remote.stat(&conn.at(layout::NON_RECOVERABLE)).await;
        let by_task = self.tasks().unwrap_or_default().into_iter().find(|t| {
            t.target.url == task.target.url && matches!(t.state, State::NonRecoverable { .. })
        });
        checks.push(match (marked, by_task) {
            (Ok(None), None) => check("target not marked non-recoverable", true, "no mark"),
            (Ok(_), Some(t)) => check(
                "target not marked non-recoverable",
                false,
                format!(
                    "task {} left the target non-recoverable (Phase Two did not complete): \
                     revert it from its pre-migration snapshot with `haul elm revert {}`, then \
                     migrate again",
                    t.id, t.id
                ),
            ),
            (Ok(Some(_)), None) => check(
                "target not marked non-recoverable",
                false,
                format!(
                    "the target holds {}: a Phase Two did not complete; revert the target \
                     to a snapshot taken before that migration (`haul elm revert ID`), then \
                     migrate again",
                    layout::NON_RECOVERABLE
                ),
            ),
            (Err(e), _) => check("target not marked non-recoverable", false, e.to_string()),
        });
        // No layers on the target.
        let layers_at = conn.at(layout::LAYERS);
        let layers = match remote.stat(&layers_at).await {
            Ok(Some(info)) if info.kind == "dir" => remote.ls(&layers_at).await.map(|l| l.len()),
            Ok(_) => Ok(0),
            Err(e) => Err(e),
        };
        checks.push(match layers {
            Ok(0) => check(
                "target has no layers",
                true,
                "the layer repository is empty",
            ),
            Ok(n) => check(
                "target has no layers",
                false,
                format!(
                    "the target already has {n} layer(s) in /{layers_at}: a migration needs a \
                     target without layers (deploy a fresh one, or revert it)"
                ),
            ),
            Err(e) => check("target has no layers", false, e.to_string()),
        });
        // Space.
        checks.push(match (remote.df().await, used) {
            (Ok(df), Ok(used)) if df.free_bytes >= used => check(
                "target free space",
                true,
                format!("{} bytes free, the source uses {used}", df.free_bytes),
            ),
            (Ok(df), Ok(used)) => check(
                "target free space",
                false,
                format!(
                    "the target has {} bytes free but the source uses {used}: expand the \
                     target's storage by at least {} bytes",
                    df.free_bytes,
                    used - df.free_bytes
                ),
            ),
            (Err(e), _) => check("target free space", false, e.to_string()),
            (_, Err(e)) => check("target free space", false, e.to_string()),
        });
        // The lease on the whole target, for this task.
        let purpose = format!(
            "appliance migration task {} ({}) from {}; `haul elm show {}` on the source host",
            task.id,
            task.mode.as_str(),
            source.display(),
            task.id
        );
        checks.push(
            match remote
                .lease_take(&conn.path, &task.holder, &purpose, self.options.lease_ttl)
                .await
            {
                Ok(_) => check(
                    "target held for this task",
                    true,
                    format!("lease on /{} taken as {}", conn.path, task.holder),
                ),
                Err(e) => check("target held for this task", false, e.to_string()),
            },
        );
        remote.close().await;
        (checks, lock, Some(conn))
    }

    /// Takes the pre-migration snapshot of the target.
    async fn snapshot_target(&self, runner: &Runner<'_>, events: &Events) -> Result<(), ElmError> {
        let t = runner.snapshot();
        let mut remote = runner.conn.remote().await?;
        let made = remote
            .snapshot_create(
                &runner.conn.path,
                &format!("haul elm task {}: target before the migration", t.id),
            )
            .await;
        remote.close().await;
        let snap = made?;
        runner.update(|t| t.snapshot = Some(snap.id.clone()))?;
        runner.log(
            Level::Info,
            &format!("pre-migration snapshot {} of the target", snap.id),
        );
        events(ElmEvent::Snapshot { id: snap.id });
        Ok(())
    }

    /// Runs Phase One and records how it ended.
    async fn phase_one(&self, mut runner: Runner<'_>) -> Result<Task, ElmError> {
        match runner.phase_one().await {
            Ok(()) => {
                runner
                    .hold_target("phase one done, awaiting confirmation to proceed")
                    .await?;
                runner.stop_ticker();
                runner.finish(State::AwaitingConfirmation, Phase::One)
            }
            Err(e) => Err(self.stopped_in_phase_one(runner, e).await),
        }
    }

    async fn stopped_in_phase_one(&self, mut runner: Runner<'_>, e: ElmError) -> ElmError {
        runner.stop_ticker();
        let id = runner.id();
        if let ElmError::Cancelled(_) = e {
            release_lease(&runner.conn, &runner.snapshot().holder).await;
            self.tasks_db().clear_cancel(&id);
            let _ = runner.finish(State::Cancelled, Phase::One);
        } else {
            let _ = runner.update(|t| t.errors.push(e.to_string()));
            runner.log(Level::Error, &e.to_string());
            let _ = runner.finish(
                State::Failed {
                    error: e.to_string(),
                },
                Phase::One,
            );
        }
        e
    }

    /// Continues a task that stopped, from where it stopped (at chunk level).
    pub async fn resume(
        &self,
        id: &str,
        target: &TargetSpec,
        events: Events,
    ) -> Result<Task, ElmError> {
        let t = self.task(id)?;
        let wrong = |hint: &str| ElmError::WrongState {
            task: id.into(),
            state: t.describe(),
            hint: hint.into(),
        };
        if t.process_alive() && t.pid != Some(std::process::id()) {
            return Err(wrong(&format!(
                "it is running in process {}; `haul elm show {id}` follows it",
                t.pid.unwrap_or_default()
            )));
        }
        match t.state {
            State::Refused | State::Done | State::Reverted | State::Checking => {
                return Err(wrong(
                    "there is nothing to resume; start a new `haul elm migrate`",
                ));
            }
            State::NonRecoverable { .. } => {
                return Err(wrong(&format!(
                    "revert the target first: `haul elm revert {id}`"
                )));
            }
            State::AwaitingConfirmation => {
                return Err(wrong(&format!(
                    "start Phase Two with `haul elm proceed {id}`"
                )));
            }
            _ => {}
        }
        events(ElmEvent::Task {
            id: id.into(),
            resumed: true,
        });
        self.resume_task(t, target, events).await
    }

    async fn resume_task(
        &self,
        t: Task,
        target: &TargetSpec,
        events: Events,
    ) -> Result<Task, ElmError> {
        let lock = SourceLock::acquire(
            &self.state_dir,
            &t.source,
            &format!("haul elm migration task {}", t.id),
        )?;
        let tasks = self.tasks_db();
        tasks.clear_cancel(&t.id);
        tasks.log(&t.id, Level::Info, "resumed");
        let conn = Arc::new(Connected::open(target, &t.holder).await?);
        let phase = t.phase;
        let t = Task {
            pid: Some(std::process::id()),
            ..t
        };
        tasks.put(&t)?;
        let runner = Runner::start(self, t, conn, events.clone());
        let result = match phase {
            Phase::Two => self.phase_two(runner, false).await,
            _ => {
                if let Err(e) = runner.hold_target("phase one: copying layers").await {
                    return Err(self.stopped_in_phase_one(runner, e).await);
                }
                if runner.snapshot().snapshot.is_none()
                    && let Err(e) = self.snapshot_target(&runner, &events).await
                {
                    return Err(self.stopped_in_phase_one(runner, e).await);
                }
                self.phase_one(runner).await
            }
        };
        drop(lock);
        result
    }

    /// Phase Two, after the operator's confirmation: a last re-scan (layers created while
    /// waiting are copied), then the database, then the mode's share handling.
    pub async fn proceed(
        &self,
        id: &str,
        target: &TargetSpec,
        events: Events,
    ) -> Result<Task, ElmError> {
        let t = self.task(id)?;
        if t.state != State::AwaitingConfirmation {
            return Err(ElmError::WrongState {
                task: id.into(),
                state: t.describe(),
                hint: "only a task awaiting confirmation (Phase One done) can proceed".into(),
            });
        }
        let lock = SourceLock::acquire(
            &self.state_dir,
            &t.source,
            &format!("haul elm migration task {id}, phase two"),
        )?;
        let tasks = self.tasks_db();
        tasks.clear_cancel(id);
        tasks.log(id, Level::Info, "proceed: the operator confirmed Phase Two");
        let conn = Arc::new(Connected::open(target, &t.holder).await?);
        let t = Task {
            pid: Some(std::process::id()),
            ..t
        };
        tasks.put(&t)?;
        let runner = Runner::start(self, t, conn, events);
        let result = self.phase_two(runner, true).await;
        drop(lock);
        result
    }

    async fn phase_two(&self, mut runner: Runner<'_>, rescan: bool) -> Result<Task, ElmError> {
        if rescan {
            // Still Phase One: a failure here leaves the target recoverable.
            if let Err(e) = runner.phase_one().await {
                return Err(self.stopped_in_phase_one(runner, e).await);
            }
        }
        let result = self.phase_two_steps(&runner).await;
        runner.stop_ticker();
        match result {
            Ok(()) => {
                release_lease(&runner.conn, &runner.snapshot().holder).await;
                runner.finish(State::Done, Phase::Closed)
            }
            Err(e) => {
                let reason = match &e {
                    ElmError::Cancelled(_) => "cancelled in phase two".to_string(),
                    other => format!("phase two failed: {other}"),
                };
                let _ = runner.update(|t| t.errors.push(e.to_string()));
                runner.log(Level::Error, &reason);
                mark_non_recoverable(&runner, &reason).await;
                self.tasks_db().clear_cancel(&runner.id());
                let _ = runner.finish(State::NonRecoverable { reason }, Phase::Two);
                Err(e)
            }
        }
    }

    async fn phase_two_steps(&self, runner: &Runner<'_>) -> Result<(), ElmError> {
        runner.update(|t| t.phase = Phase::Two)?;
        runner.set_state(State::Running)?;
        runner
            .hold_target("phase two: the target is unusable until the migration completes")
            .await?;
        runner.phase_two_copies().await?;
        let t = runner.snapshot();
        let share = match t.mode {
            Mode::Copy => t.share.clone(),
            Mode::Move => t.source_share.clone(),
        }
        .ok_or_else(|| ElmError::Invalid("no share to give the target".into()))?;
        let text = format!("{share}\n");
        let at = runner.conn.at(layout::SHARE);
        let mut remote = runner.conn.remote().await?;
        let written = async {
            remote.put(&at, text.as_bytes()).await?;
            remote.cat(&at).await
        }
        .await;
        remote.close().await;
        if written? != text.as_bytes() {
            return Err(ElmError::Invalid(format!(
                "the target's {} does not read back as written",
                layout::SHARE
            )));
        }
        runner.log(Level::Info, &format!("the target's share is now {share}"));
        // Everything else succeeded: only now is the source changed.
        match t.mode {
            Mode::Move => {
                let path = t.source.join(layout::SHARE);
                std::fs::remove_file(&path).map_err(|e| ElmError::local(&path, e))?;
                runner.log(
                    Level::Info,
                    "move complete: the source's network file share setting was removed",
                );
            }
            Mode::Copy => {
                let cleaned = clean_connector_caches(&t.source)?;
                runner.log(
                    Level::Info,
                    &format!("copy complete: {cleaned} source connector cache(s) cleaned up"),
                );
            }
        }
        Ok(())
    }

    /// Cancels task `id`. In Phase One the copied layers stay and the task can be resumed
    /// (or continued by a new `migrate`); in Phase Two (only with `confirmed`) the target
    /// is marked non-recoverable and stays held by the task until `revert`.
    pub async fn cancel(
        &self,
        id: &str,
        target: &TargetSpec,
        confirmed: bool,
    ) -> Result<Task, ElmError> {
        let t = self.task(id)?;
        if !t.state.is_open() || matches!(t.state, State::NonRecoverable { .. } | State::Cancelled)
        {
            return Err(ElmError::WrongState {
                task: id.into(),
                state: t.describe(),
                hint: "there is nothing to cancel".into(),
            });
        }
        if t.phase == Phase::Two && !confirmed {
            return Err(ElmError::Invalid(format!(
                "task {id} is in Phase Two: cancelling it leaves the target non-recoverable, and \
                 the target must then be reverted to its pre-migration snapshot (`haul elm \
                 revert {id}`) before it can be used or migrated into again. Confirm with --yes"
            )));
        }
        let tasks = self.tasks_db();
        if t.process_alive() && t.pid != Some(std::process::id()) {
            tasks.request_cancel(id)?;
            tasks.log(id, Level::Warn, "cancel requested");
            let deadline = std::time::Instant::now() + CANCEL_WAIT;
            while self.task(id)?.process_alive() {
                if std::time::Instant::now() > deadline {
                    return Err(ElmError::Invalid(format!(
                        "task {id}'s process {} did not stop within a minute; stop it (kill {}) \
                         and cancel again",
                        t.pid.unwrap_or_default(),
                        t.pid.unwrap_or_default()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let after = self.task(id)?;
            if matches!(
                after.state,
                State::Cancelled | State::NonRecoverable { .. } | State::Done
            ) {
                tasks.clear_cancel(id);
                return Ok(after);
            }
        }
        tasks.clear_cancel(id);
        let conn = Arc::new(Connected::open(target, &t.holder).await?);
        let mut runner = Runner::start(
            self,
            Task {
                pid: None,
                ..t.clone()
            },
            conn,
            crate::no_events(),
        );
        runner.stop_ticker();
        if t.phase == Phase::Two {
            let reason = "cancelled in phase two".to_string();
            mark_non_recoverable(&runner, &reason).await;
            runner.finish(State::NonRecoverable { reason }, Phase::Two)
        } else {
            release_lease(&runner.conn, &t.holder).await;
            runner.finish(State::Cancelled, Phase::One)
        }
    }

    /// Restores the target from task `id`'s pre-migration snapshot (the article's "revert
    /// to a snapshot taken prior to migration"), which also clears the non-recoverable mark,
    /// and gives the target up.
    pub async fn revert(&self, id: &str, target: &TargetSpec) -> Result<Task, ElmError> {
        let t = self.task(id)?;
        let wrong = |hint: &str| ElmError::WrongState {
            task: id.into(),
            state: t.describe(),
            hint: hint.into(),
        };
        if t.process_alive() && t.pid != Some(std::process::id()) {
            return Err(wrong("it is running: cancel it first"));
        }
        if !matches!(
            t.state,
            State::NonRecoverable { .. } | State::Cancelled | State::Failed { .. }
        ) {
            return Err(wrong(
                "only a cancelled or failed task's target is reverted (a task awaiting \
                 confirmation is cancelled first)",
            ));
        }
        let Some(snapshot) = t.snapshot.clone() else {
            return Err(wrong(
                "it has no pre-migration snapshot (nothing was copied)",
            ));
        };
        let conn = Arc::new(Connected::open(target, &t.holder).await?);
        let mut runner = Runner::start(
            self,
            Task {
                pid: None,
                ..t.clone()
            },
            conn.clone(),
            crate::no_events(),
        );
        runner.stop_ticker();
        runner
            .hold_target("reverting the target to its pre-migration snapshot")
            .await?;
        let mut remote = conn.remote().await?;
        let restored = async {
            let report = remote.snapshot_restore(&snapshot).await?;
            let marker = conn.at(layout::NON_RECOVERABLE);
            if remote.stat(&marker).await?.is_some() {
                remote.rm(&marker).await?;
            }
            Ok::<_, haul_engine::EngineError>(report)
        }
        .await;
        remote.close().await;
        let report = restored?;
        runner.log(
            Level::Info,
            &format!(
                "target restored from snapshot {snapshot}: {} entries back, {} removed",
                report.restored, report.removed
            ),
        );
        release_lease(&conn, &t.holder).await;
        runner.finish(State::Reverted, Phase::Closed)
    }
}

/// Gives the task's lease up, best effort (it expires anyway).
async fn release_lease(conn: &Connected, holder: &str) {
    if let Ok(mut remote) = conn.remote().await {
        let _ = remote.lease_release(&conn.path, holder).await;
        remote.close().await;
    }
}

/// Marks the target non-recoverable (best effort: the task's own record says so too) and
/// keeps it held by the task.
async fn mark_non_recoverable(runner: &Runner<'_>, reason: &str) {
    let t = runner.snapshot();
    let _ = runner
        .hold_target(&format!(
            "NON-RECOVERABLE ({reason}): revert it with `haul elm revert {}`",
            t.id
        ))
        .await;
    let text = format!(
        "task={}\nreason={reason}\nrevert=haul elm revert {}\nsnapshot={}\n",
        t.id,
        t.id,
        t.snapshot.as_deref().unwrap_or("none")
    );
    let marked = async {
        let mut remote = runner.conn.remote().await?;
        let put = remote
            .put(&runner.conn.at(layout::NON_RECOVERABLE), text.as_bytes())
            .await;
        remote.close().await;
        put.map_err(ElmError::from)
    }
    .await;
    match marked {
        Ok(()) => runner.log(Level::Error, "the target is marked non-recoverable"),
        Err(e) => runner.log(
            Level::Error,
            &format!("could not mark the target non-recoverable ({e}); the task record says so"),
        ),
    }
}

/// Empties every `connectors/*/cache` of the source; returns how many.
fn clean_connector_caches(source: &Path) -> Result<u64, ElmError> {
    let dir = source.join(layout::CONNECTORS);
    let mut cleaned = 0;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    for entry in entries {
        let cache = entry
            .map_err(|e| ElmError::local(&dir, e))?
            .path()
            .join(layout::CACHE);
        if !cache.is_dir() {
            continue;
        }
        for item in std::fs::read_dir(&cache).map_err(|e| ElmError::local(&cache, e))? {
            let path = item.map_err(|e| ElmError::local(&cache, e))?.path();
            let removed = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| ElmError::local(&path, e))?;
        }
        cleaned += 1;
    }
    Ok(cleaned)
}
