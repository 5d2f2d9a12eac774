//! Running a task's phases: the copy jobs, the re-scans, the pauses for space, the ticker
//! that keeps the task's record (bytes, rate, ETA) current and notices a cancel.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haul_engine::job::{Endpoint, Job, JobEvent};
use haul_engine::{EngineError, Progress, TransferOptions};
use haul_state::Level;

use crate::error::ElmError;
use crate::layout::{self, Inventory};
use crate::target::Shared;
use crate::task::{Phase, State, Task, Tasks, now_ms};
use crate::{Elm, ElmEvent};

/// How often the task's record is written while it runs.
const TICK: Duration = Duration::from_millis(300);
/// A paused task tries again once the target's free space grew by this much (or covers
/// everything still to write).
const RETRY_GROWTH: u64 = 4 << 20;

/// One process running one task.
pub(crate) struct Runner<'a> {
    pub(crate) elm: &'a Elm,
    pub(crate) task: Arc<Mutex<Task>>,
    pub(crate) conn: Shared,
    pub(crate) events: Arc<dyn Fn(ElmEvent) + Send + Sync>,
    /// The live counters of the job running now.
    current: Arc<Mutex<Option<Arc<Progress>>>>,
    /// Bytes sent and done before the job running now.
    base: Arc<Mutex<(u64, u64)>>,
    /// The layers on the target and verified, by name.
    layers_done: Arc<Mutex<HashSet<String>>>,
    cancelled: tokio::sync::watch::Receiver<bool>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<'a> Runner<'a> {
    pub(crate) fn start(
        elm: &'a Elm,
        task: Task,
        conn: Shared,
        events: Arc<dyn Fn(ElmEvent) + Send + Sync>,
    ) -> Runner<'a> {
        let base = (task.bytes_sent, task.bytes_done);
        let task = Arc::new(Mutex::new(task));
        let current: Arc<Mutex<Option<Arc<Progress>>>> = Arc::default();
        let base = Arc::new(Mutex::new(base));
        let (cancel_tx, cancelled) = tokio::sync::watch::channel(false);
        let ticker = {
            let (task, current, base, db) =
                (task.clone(), current.clone(), base.clone(), elm.db.clone());
            tokio::spawn(async move {
                let mut last = (Instant::now(), lock(&base).0);
                loop {
                    tokio::time::sleep(TICK).await;
                    let tasks = Tasks::new(&db);
                    // Locks one at a time, in the order `copy_part` takes them.
                    let (sent0, done0) = *lock(&base);
                    let live = lock(&current)
                        .as_ref()
                        .map(|p| (Progress::get(&p.bytes_sent), Progress::get(&p.bytes_done)));
                    let snapshot = {
                        let mut t = lock(&task);
                        if let Some((sent, done)) = live {
                            t.bytes_sent = sent0 + sent;
                            t.bytes_done = (done0 + done).min(t.bytes_total);
                        }
                        let dt = last.0.elapsed().as_secs_f64();
                        if dt >= 1.0 {
                            let rate = t.bytes_sent.saturating_sub(last.1) as f64 / dt;
                            t.rate_bps = if t.rate_bps == 0.0 {
                                rate
                            } else {
                                0.5 * t.rate_bps + 0.5 * rate
                            };
                            last = (Instant::now(), t.bytes_sent);
                        }
                        t.eta_s = (t.rate_bps > 0.0).then(|| {
                            (t.bytes_total.saturating_sub(t.bytes_done) as f64 / t.rate_bps) as u64
                        });
                        t.clone()
                    };
                    let _ = tasks.put(&snapshot);
                    if tasks.cancel_requested(&snapshot.id) {
                        let _ = cancel_tx.send(true);
                    }
                }
            })
        };
        Runner {
            elm,
            task,
            conn,
            events,
            current,
            base,
            layers_done: Arc::default(),
            cancelled,
            ticker: Some(ticker),
        }
    }

    pub(crate) fn id(&self) -> String {
        lock(&self.task).id.clone()
    }

    pub(crate) fn snapshot(&self) -> Task {
        lock(&self.task).clone()
    }

    /// Changes the task and stores it.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Task)) -> Result<Task, ElmError> {
        let t = {
            let mut t = lock(&self.task);
            f(&mut t);
            t.clone()
        };
        Tasks::new(&self.elm.db).put(&t)?;
        Ok(t)
    }

    pub(crate) fn log(&self, level: Level, message: &str) {
        Tasks::new(&self.elm.db).log(&self.id(), level, message);
    }

    pub(crate) fn set_state(&self, state: State) -> Result<(), ElmError> {
        let shown = state.describe();
        self.update(|t| t.state = state)?;
        self.log(Level::Info, &format!("state: {shown}"));
        (self.events)(ElmEvent::State { state: shown });
        Ok(())
    }

    fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow() || Tasks::new(&self.elm.db).cancel_requested(&self.id())
    }

    /// Takes or renews the task's lease on the whole target, for `why`.
    pub(crate) async fn hold_target(&self, why: &str) -> Result<(), ElmError> {
        let t = self.snapshot();
        let mut remote = self.conn.remote().await?;
        let purpose = format!(
            "appliance migration task {} ({}) from {}: {why}; `haul elm show {}` on the source \
             host",
            t.id,
            t.mode.as_str(),
            t.source.display(),
            t.id
        );
        let result = remote
            .lease_take(
                &self.conn.path,
                &t.holder,
                &purpose,
                self.elm.options.lease_ttl,
            )
            .await;
        remote.close().await;
        result?;
        Ok(())
    }

    /// Phase One: copies layers, templates, connectors (without caches) and agent
    /// registrations, re-scanning the source until a scan finds no new or changed layer.
    pub(crate) async fn phase_one(&self) -> Result<(), ElmError> {
        let source = self.snapshot().source;
        self.update(|t| t.phase = Phase::One)?;
        self.set_state(State::Running)?;
        loop {
            if self.is_cancelled() {
                return Err(ElmError::Cancelled(self.id()));
            }
            self.hold_target("phase one: copying layers").await?;
            let before = layout::layers(&source)?;
            let pass = self.update(|t| t.passes += 1)?.passes;
            self.count(&source, &before).await?;
            (self.events)(ElmEvent::Pass {
                pass,
                layers: before.len() as u64,
            });
            self.log(
                Level::Info,
                &format!(
                    "phase one, scan {pass}: {} layers on the source",
                    before.len()
                ),
            );
            for (part, rules) in layout::PHASE_ONE {
                self.copy_part(&source, part, rules).await?;
            }
            let after = layout::layers(&source)?;
            self.count(&source, &after).await?;
            if after == before {
                break;
            }
            self.log(
                Level::Info,
                "the source's layers changed during the scan: scanning again",
            );
        }
        self.update(|t| t.bytes_done = t.bytes_total)?;
        Ok(())
    }

    /// Counts layers done and the phase's bytes from the target's listing.
    async fn count(&self, source: &Path, layers: &Inventory) -> Result<(), ElmError> {
        let mut remote = self.conn.remote().await?;
        let listing = match remote.stat(&self.conn.at(layout::LAYERS)).await? {
            Some(info) if info.kind == "dir" => remote.ls(&self.conn.at(layout::LAYERS)).await?,
            _ => Vec::new(),
        };
        remote.close().await;
        let mut done = HashSet::new();
        let mut done_bytes = 0u64;
        for (name, stamp) in layers {
            let secs = stamp.mtime_ns.div_euclid(1_000_000_000) as i64;
            if listing
                .iter()
                .any(|i| &i.name == name && i.size == stamp.size && i.mtime_sec == secs)
            {
                done.insert(name.clone());
                done_bytes += stamp.size;
            }
        }
        let done_count = done.len() as u64;
        *lock(&self.layers_done) = done;
        let mut total = 0u64;
        for (part, _) in layout::PHASE_ONE {
            total += layout::usage(&source.join(part), part == layout::CONNECTORS)?.bytes;
        }
        self.update(|t| {
            t.layers_total = layers.len() as u64;
            t.layers_done = done_count;
            t.bytes_total = total;
            t.bytes_done = done_bytes.min(total);
        })?;
        lock(&self.base).1 = done_bytes;
        Ok(())
    }

    /// Phase Two's copies: the database, and the configuration without the share and the
    /// certificates.
    pub(crate) async fn phase_two_copies(&self) -> Result<(), ElmError> {
        let source = self.snapshot().source;
        let total = layout::usage(&source.join(layout::DATABASE), false)?.bytes;
        self.update(|t| {
            t.bytes_total = total;
            t.bytes_done = 0;
        })?;
        lock(&self.base).1 = 0;
        self.copy_part(&source, layout::DATABASE, &[]).await?;
        self.copy_part(&source, layout::CONFIG, &["/share", "/certs/"])
            .await?;
        self.update(|t| t.bytes_done = t.bytes_total)?;
        Ok(())
    }

    /// Copies `source/part` to the same place on the target, pausing while the target is
    /// full and continuing once it has room.
    async fn copy_part(&self, source: &Path, part: &str, rules: &[&str]) -> Result<(), ElmError> {
        let src = source.join(part);
        if !src.exists() {
            return Ok(());
        }
        let filter = if rules.is_empty() {
            None
        } else {
            let mut f = haul_manifest::Filter::new();
            for rule in rules {
                f = f
                    .exclude(rule)
                    .map_err(|e| ElmError::Invalid(format!("filter {rule}: {e}")))?;
            }
            Some(Arc::new(f))
        };
        let t = self.snapshot();
        let options = TransferOptions {
            holder: Some(t.holder.clone()),
            bwlimit: self.elm.options.bwlimit,
            list_files: part == layout::LAYERS,
            filter,
            ..TransferOptions::default()
        };
        let options = match self.elm.options.chunk_size {
            Some(c) => TransferOptions {
                chunk_size: c,
                ..options
            },
            None => options,
        };
        let mut busy_retries = 0;
        loop {
            let job = Job::new(
                Endpoint::Local(src.clone()),
                Endpoint::Remote(self.conn.end(part)),
            )
            .options(options.clone());
            let progress = job.progress();
            *lock(&self.current) = Some(progress.clone());
            let (task, events, seen) = (
                self.task.clone(),
                self.events.clone(),
                self.layers_done.clone(),
            );
            let on_event = move |event: JobEvent| match event {
                // Every layer is listed, copied or found unchanged: count each once.
                JobEvent::FileDone { path, .. } => {
                    let count = {
                        let mut seen = lock(&seen);
                        seen.insert(path.clone()).then_some(seen.len() as u64)
                    };
                    if let Some(count) = count {
                        lock(&task).layers_done = count;
                        events(ElmEvent::LayerCopied { name: path });
                    }
                }
                JobEvent::Engine(haul_engine::Event::Warning { message }) => {
                    events(ElmEvent::Warning { message });
                }
                _ => {}
            };
            let mut cancelled = self.cancelled.clone();
            let result = tokio::select! {
                r = job.run(on_event) => Some(r),
                _ = cancelled.wait_for(|c| *c) => None,
            };
            let (sent, done) = {
                let mut base = lock(&self.base);
                base.0 += Progress::get(&progress.bytes_sent);
                base.1 += Progress::get(&progress.bytes_done);
                *lock(&self.current) = None;
                *base
            };
            {
                let mut t = lock(&self.task);
                t.bytes_sent = sent;
                t.bytes_done = done.min(t.bytes_total);
            }
            self.update(|_| {})?;
            match result {
                None => {
                    // The dropped job closes its connection; give the close a moment to
                    // leave, so the host ends that session now, not at its idle timeout.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return Err(ElmError::Cancelled(self.id()));
                }
                Some(Ok(summary)) => {
                    // A session of a stopped run may still hold a file on the host until the
                    // host notices (its idle timeout): wait for it rather than fail.
                    let busy = summary
                        .errors
                        .iter()
                        .any(|p| p.message.contains("another haul receiver is writing"));
                    if busy && busy_retries < 4 {
                        busy_retries += 1;
                        self.log(Level::Warn, "a stopped session still holds a file on the target: waiting for the host to end it");
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        continue;
                    }
                    if summary.files_failed > 0 || !summary.errors.is_empty() {
                        let first = summary
                            .errors
                            .first()
                            .map(|p| format!("{}: {}", p.path, p.message))
                            .unwrap_or_default();
                        return Err(ElmError::Invalid(format!(
                            "{} file(s) of {part} could not be copied (first: {first}); fix \
                             that and run `haul elm resume {}`",
                            summary.files_failed.max(1),
                            self.id()
                        )));
                    }
                    self.progress_note(part, summary.bytes_sent);
                    return Ok(());
                }
                Some(Err(e)) if e.exit_code() == 3 => self.wait_for_space(&e).await?,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    fn progress_note(&self, part: &str, sent: u64) {
        self.log(Level::Info, &format!("{part}: copied ({sent} bytes sent)"));
    }

    /// The target is full: shows how much more it needs, polls its free space, and returns
    /// once it has grown (or Err if the task is cancelled meanwhile).
    async fn wait_for_space(&self, e: &EngineError) -> Result<(), ElmError> {
        let remaining = match e {
            EngineError::NoSpace {
                bytes_remaining, ..
            } => *bytes_remaining,
            _ => RETRY_GROWTH,
        };
        let free_at_pause = self.free().await.unwrap_or(0);
        let needed = remaining.saturating_sub(free_at_pause).max(1);
        self.log(Level::Warn, &e.to_string());
        self.set_state(State::Paused {
            bytes_needed: needed,
        })?;
        (self.events)(ElmEvent::Paused {
            bytes_needed: needed,
        });
        loop {
            tokio::time::sleep(self.elm.options.poll).await;
            if self.is_cancelled() {
                return Err(ElmError::Cancelled(self.id()));
            }
            let Ok(free) = self.free().await else {
                continue;
            };
            if free >= remaining || free >= free_at_pause.saturating_add(RETRY_GROWTH) {
                self.log(
                    Level::Info,
                    &format!("the target has {free} bytes free now: continuing"),
                );
                (self.events)(ElmEvent::Continued { free_bytes: free });
                self.set_state(State::Running)?;
                return Ok(());
            }
        }
    }

    async fn free(&self) -> Result<u64, ElmError> {
        let mut remote = self.conn.remote().await?;
        let df = remote.df().await;
        remote.close().await;
        Ok(df?.free_bytes)
    }

    /// Marks the end of the run in the record.
    pub(crate) fn finish(&self, state: State, phase: Phase) -> Result<Task, ElmError> {
        let closed = !state.is_open();
        let shown = state.describe();
        let t = self.update(|t| {
            t.state = state;
            t.phase = phase;
            t.pid = None;
            t.rate_bps = 0.0;
            t.eta_s = None;
            if closed {
                t.finished_ms = Some(now_ms());
            }
        })?;
        self.log(Level::Info, &format!("state: {shown}"));
        (self.events)(ElmEvent::State { state: shown });
        Ok(t)
    }

    /// Stops the ticker (so it writes no more) before the final record.
    pub(crate) fn stop_ticker(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }
}
