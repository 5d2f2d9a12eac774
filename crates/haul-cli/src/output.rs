//! Rendering: progress bars on a terminal, JSON lines with `--json`, a short summary otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use haul_engine::{Event, EventSink, Progress, Summary};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How a command reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// JSON lines on stdout.
    Json,
    /// Progress bars on stderr (a terminal).
    Bars,
    /// Only the summary and problems (not a terminal).
    Quiet,
}

impl Mode {
    pub(crate) fn pick(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Quiet
        }
    }
}

/// Prints one JSON object as a line on stdout.
pub(crate) fn json_line(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// An event sink that renders events for `mode`.
pub(crate) fn event_sink(mode: Mode, bar: Option<ProgressBar>) -> EventSink {
    Arc::new(move |event: Event| match mode {
        Mode::Json => {
            if let Ok(value) = serde_json::to_value(&event) {
                json_line(&value);
            }
        }
        Mode::Bars | Mode::Quiet if matches!(event, Event::FileInstalled { .. }) => {
            // The file list is output, not commentary: stdout, so it can be saved or piped.
            let text = human_event(&event);
            match &bar {
                Some(bar) => bar.suspend(|| println!("{text}")),
                None => println!("{text}"),
            }
        }
        Mode::Bars | Mode::Quiet => {
            let text = human_event(&event);
            match &bar {
                Some(bar) => bar.println(text),
                None => eprintln!("{text}"),
            }
        }
    })
}

fn human_event(event: &Event) -> String {
    match event {
        Event::FileFailed { message, .. } => format!("haul: error: {message}"),
        Event::Warning { message } => format!("haul: warning: {message}"),
        Event::FileInstalled { path, blake3, .. } => format!("{blake3}  {path}"),
        Event::Deleted { path, dry_run } => {
            if *dry_run {
                format!("haul: would delete {path}")
            } else {
                format!("haul: deleted {path}")
            }
        }
        Event::TrustedOnFirstUse {
            host,
            fingerprint,
            known_hosts,
        } => format!(
            "haul: WARNING: first connection to {host}. Trusting its certificate {fingerprint} \
             and recording it in {known_hosts}.\nhaul: WARNING: compare this fingerprint with the \
             one `haul serve` printed on that host; if they differ, remove that line and do not \
             trust this connection."
        ),
        Event::SessionStarted { peer, dest } => {
            format!("haul serve: session from {peer} into {:?}", dest)
        }
        Event::RemoteOperation {
            peer,
            op,
            paths,
            error,
        } => {
            let paths = paths
                .iter()
                .map(|p| format!("/{}", p.trim_start_matches('/')))
                .collect::<Vec<_>>()
                .join(" -> ");
            match error {
                None => format!("haul serve: {peer}: {op} {paths}"),
                Some(e) => format!("haul serve: {peer}: {op} {paths} refused: {e}"),
            }
        }
        Event::SessionEnded {
            peer,
            installed,
            failed,
            error,
        } => match error {
            None => format!(
                "haul serve: session from {peer} done: {installed} installed, {failed} failed"
            ),
            Some(e) => format!("haul serve: session from {peer} ended: {e}"),
        },
    }
}

/// Samples the progress counters onto a bar until stopped.
pub(crate) struct Ticker {
    pub(crate) bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Ticker {
    pub(crate) fn start(mode: Mode, progress: Arc<Progress>) -> Ticker {
        if mode != Mode::Bars {
            return Ticker {
                bar: None,
                task: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let total = Progress::get(&progress.bytes_scanned);
                let files = Progress::get(&progress.files_scanned);
                let scanning = !progress.scan_done.load(Ordering::Relaxed);
                shown.set_length(total);
                shown.set_position(Progress::get(&progress.bytes_sent).min(total));
                shown.set_message(format!(
                    "{}/{}{} files",
                    Progress::get(&progress.files_done),
                    files,
                    if scanning { "+" } else { "" }
                ));
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        });
        Ticker {
            bar: Some(bar),
            task: Some(task),
        }
    }

    pub(crate) fn stop(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Prints the final summary for `mode`.
pub(crate) fn summary(mode: Mode, summary: &Summary) {
    match mode {
        Mode::Json => {
            if let Ok(serde_json::Value::Object(mut map)) = serde_json::to_value(summary) {
                map.insert("event".into(), "summary".into());
                json_line(&serde_json::Value::Object(map));
            }
        }
        Mode::Bars | Mode::Quiet if summary.dry_run => {
            let changed = summary
                .files_transferred
                .saturating_sub(summary.files_unchanged);
            eprintln!(
                "haul: dry run: {} files ({}) in the source; {} unchanged on the target, {} to \
                 copy or update; would send {} in {} chunks and reuse {} chunks the target holds",
                summary.files_total,
                indicatif::HumanBytes(summary.bytes_total),
                summary.files_unchanged,
                changed,
                indicatif::HumanBytes(summary.would_send_bytes),
                summary.would_send_chunks,
                summary.chunks_reused,
            );
            for r in &summary.renamed_aside {
                eprintln!("haul: dry run: would rename {} to {}", r.from, r.to);
            }
            if summary.meta_only_changes > 0 {
                eprintln!(
                    "haul: dry run: {} entries would have only their metadata (owner, mode, \
                     attributes) updated, with no data sent",
                    summary.meta_only_changes
                );
            }
            if !summary.deleted.is_empty() {
                eprintln!(
                    "haul: dry run: --delete would remove {} paths ({} entries in all), listed above",
                    summary.deleted.len(),
                    summary.deleted_total
                );
            }
            match summary.estimated_s {
                Some(s) => eprintln!(
                    "haul: dry run: estimated {} at this receiver's measured throughput",
                    indicatif::HumanDuration(Duration::from_secs_f64(s.max(1.0)))
                ),
                None => eprintln!(
                    "haul: dry run: no throughput history for this receiver yet, so no time \
                     estimate; a real run records one"
                ),
            }
        }
        Mode::Bars | Mode::Quiet => {
            let rate = if summary.elapsed_s > 0.0 {
                summary.bytes_sent as f64 / summary.elapsed_s
            } else {
                0.0
            };
            eprintln!(
                "haul: {} of {} files copied, {} already up to date ({}), {} dirs, {} symlinks; \
                 {} sent in {} chunks; {:.1} s, {}/s",
                summary
                    .files_transferred
                    .saturating_sub(summary.files_unchanged),
                summary.files_total,
                summary.files_unchanged,
                indicatif::HumanBytes(summary.bytes_total),
                summary.dirs,
                summary.symlinks,
                indicatif::HumanBytes(summary.bytes_sent),
                summary.chunks_sent,
                summary.elapsed_s,
                indicatif::HumanBytes(rate as u64),
            );
            for r in &summary.renamed_aside {
                eprintln!(
                    "haul: renamed {} aside to {} before copying it anew",
                    r.from, r.to
                );
            }
            if summary.chunks_reused > 0 {
                eprintln!(
                    "haul: {} chunks ({}) reused from the target instead of sent",
                    summary.chunks_reused,
                    indicatif::HumanBytes(summary.bytes_reused),
                );
            }
            if summary.hard_links + summary.specials + summary.meta_only_changes > 0 {
                eprintln!(
                    "haul: {} hard links, {} FIFOs/sockets/devices; {} entries had only their \
                     metadata updated (no data sent)",
                    summary.hard_links, summary.specials, summary.meta_only_changes
                );
            }
            if !summary.deleted.is_empty() {
                eprintln!(
                    "haul: --delete removed {} paths ({} entries in all)",
                    summary.deleted.len(),
                    summary.deleted_total
                );
            }
            let n = &summary.not_applied;
            if n.owners + n.special_bits + n.devices + n.xattrs > 0 {
                eprintln!(
                    "haul: the receiver did not apply: {} owners, {} setuid/setgid bits, {} device \
                     nodes, {} extended attributes (its grant is not privileged, or it does not \
                     run as root, or the file system lacks attributes); the copy is otherwise \
                     complete",
                    n.owners, n.special_bits, n.devices, n.xattrs
                );
            }
            if !summary.errors.is_empty() {
                eprintln!(
                    "haul: {} problem(s); the files named above were not copied, everything else was",
                    summary.errors.len()
                );
            }
        }
    }
}

/// Reports the error that ended a command.
pub(crate) fn fatal(mode: Mode, error: &anyhow::Error, code: u8) {
    fatal_after(mode, error, code, None);
}

/// Reports the error that ended a transfer, with what it had done by then (so a script can
/// add up the bytes of an interrupted run and of the run that finished it).
pub(crate) fn fatal_after(
    mode: Mode,
    error: &anyhow::Error,
    code: u8,
    progress: Option<&Progress>,
) {
    if mode == Mode::Json {
        let mut value = serde_json::json!({
            "event": "error",
            "message": chain(error),
            "exit_code": code,
        });
        if let (Some(p), Some(map)) = (progress, value.as_object_mut()) {
            map.insert("bytes_sent".into(), Progress::get(&p.bytes_sent).into());
            map.insert("chunks_sent".into(), Progress::get(&p.chunks_sent).into());
            map.insert(
                "files_transferred".into(),
                Progress::get(&p.files_done).into(),
            );
        }
        json_line(&value);
    }
    eprintln!("haul: error: {}", chain(error));
}

/// The error and its causes, each cause only if the text so far does not already say it (many
/// errors quote their cause in their own message).
pub(crate) fn chain(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
