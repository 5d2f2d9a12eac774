//! `haul groupwise ...`: the post office migration workflow (Reload for GroupWise), rendered
//! for a person (progress bars, text) or as JSON lines with `--json`. The rules live in
//! `haul-groupwise`; this file parses, resolves the target and prints.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use haul_engine::job::JobEvent;
use haul_engine::remote::RemoteTarget;
use haul_groupwise::clock::{format_bytes, format_duration, parse_duration, parse_size};
use haul_groupwise::migrate::{self, StepEvent, StepKind};
use haul_groupwise::{GwError, Profile, SampleSpec, Target, care, profile, sample, verify};
use haul_state::StateDb;
use serde::Serialize;

use crate::args::{CongestionArg, RemoteArgs};
use crate::output::{self, Mode};

/// `haul groupwise` and its options.
#[derive(Debug, Args)]
pub(crate) struct GroupwiseArgs {
    /// Print JSON lines (events, then one result object) instead of text and progress bars.
    #[arg(long, global = true)]
    json: bool,
    /// Where the state database (profiles, migration logs, run history) lives [default:
    /// $HAUL_STATE_DIR, or $XDG_STATE_HOME/haul, or ~/.local/state/haul].
    #[arg(long, global = true, value_name = "DIR", env = "HAUL_STATE_DIR")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    cmd: GroupwiseCmd,
}

/// The workflow's steps.
#[derive(Debug, Subcommand)]
enum GroupwiseCmd {
    /// Make a synthetic Reload backup area to try the workflow on: DIR/<TAG>/<PO>/ for N
    /// dated backups (TUEMAY28, WEDMAY29, ...), each a post office with offiles/fd0..fd7f full
    /// of small BLOBs (85-90% of the bytes), ofuser/, ofmsg/, ofwork/, ofviews/, gwdms/ and
    /// the top-level databases, and DIR/<TAG>/backup.json with the backup's completion time
    /// and duration. Later backups share most BLOBs, add new mail and lose a little. The same
    /// seed makes the same tree.
    Sample {
        /// Where the backup area goes.
        dir: PathBuf,
        /// Bytes of one post office, about (e.g. 64M, 2G).
        #[arg(long, default_value = "32M", value_parser = parse_size)]
        size: u64,
        /// Dated backups to make.
        #[arg(long, default_value_t = 3)]
        backups: u32,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// BLOB files in the first backup [default: one per 16 KiB of BLOB bytes].
        #[arg(long)]
        blobs: Option<u64>,
        /// The post office directory's name.
        #[arg(long, default_value = "po1")]
        po: String,
    },
    /// Post office profiles: the post office, where Reload keeps its backups, and the target
    /// server (Reload's "POST OFFICE PROFILE").
    Profile {
        #[command(subcommand)]
        op: ProfileOp,
    },
    /// Test the connection to the new post office server (setup step 3): the target is
    /// reachable, the credentials work, a test file can be created and removed, and its free
    /// space is reported against what the next step needs (the renamed-aside copies of a
    /// repeated full migration keep their space). Exit 1 if anything fails.
    Check {
        /// The profile.
        name: String,
    },
    /// Step #1, the pre-migration: copy only the BLOBs (offiles/) of a backup (default: the
    /// newest) to the target, days before the cut-over, while users keep working. Run it
    /// again and only new BLOBs move.
    Premigrate {
        /// The profile.
        name: String,
        /// The backup tag to copy from [default: the newest by completion time].
        #[arg(long, value_name = "TAG")]
        backup: Option<String>,
        /// Show what it would do, and the space it needs; copy nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Step #3, the final full migration: copy everything from a backup (default: the newest).
    /// offiles/ moves incrementally as a mirror (BLOBs gone from the backup are removed from
    /// the target); every other directory the target holds from an earlier full run is
    /// renamed aside (ofuser -> ofuser.1, ...) and copied anew, reusing the renamed copy's
    /// data locally. Refused (exit 3) when the target lacks the space; holds a lease on the
    /// target post office while it runs; a killed or failed run is continued by the next one.
    Migrate {
        /// The profile.
        name: String,
        /// The backup tag to copy from [default: the newest by completion time].
        #[arg(long, value_name = "TAG")]
        backup: Option<String>,
        /// A command to run first (step #2, e.g. unload the DR POA); the migration stops if it
        /// fails. Run with `sh -c`, after the space check.
        #[arg(long, value_name = "CMD")]
        before: Option<String>,
        /// Show what it would do (what is renamed aside, the space it needs); copy nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Post migration step 1: compare the new post office with the backup it was migrated
    /// from (hashed on the target's side, never copied back). ofuser/ and ofmsg/ must exist
    /// and hold data; every file must match by hash; nothing may be missing or extra
    /// (renamed-aside copies excluded). Exit 0 only if all holds; otherwise every difference
    /// is listed and the exit status is 1.
    Verify {
        /// The profile.
        name: String,
        /// Compare with this backup instead of the one the last full migration copied.
        #[arg(long, value_name = "TAG")]
        backup: Option<String>,
    },
    /// Post migration step 9: list the duplicate directories (ofuser.1, ...) repeated full
    /// migrations left on the target, with their sizes and ages; delete them only with
    /// --delete, once it is safe.
    Cleanup {
        /// The profile.
        name: String,
        /// Delete them.
        #[arg(long)]
        delete: bool,
    },
    /// The profile's migration log: every step's start, backup, what was copied, removed and
    /// renamed, errors, end and duration.
    Log {
        /// The profile.
        name: String,
        /// The latest lines to show.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Planning step 4: estimate the migration time: (a) the last full-migration trial (or,
    /// before one, a projection from the pre-migration's measured throughput, labelled so)
    /// + (b) the backup's time + (c) the post-migration time, plus a buffer.
    Estimate {
        /// The profile.
        name: String,
        /// (b) How long the post office backup takes [default: the newest backup's recorded
        /// duration] (e.g. 1.5h, 90m).
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        backup_time: Option<f64>,
        /// (c) How long the post-migration steps take (e.g. 1.5h).
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        post_time: Option<f64>,
        /// Buffer for unexpected issues, percent of a+b+c.
        #[arg(long, value_name = "PCT", default_value_t = 20.0)]
        buffer: f64,
    },
}

/// How the profile's target is reached.
#[derive(Debug, Args)]
struct TargetArgs {
    /// For a remote target: the server's certificate fingerprint, as `haul serve` printed it.
    #[arg(long)]
    fingerprint: Option<String>,
    /// For a remote target: the file holding the token (the path is stored, not the token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// For a remote target: the known-hosts file used without --fingerprint.
    #[arg(long)]
    known_hosts: Option<PathBuf>,
}

/// `haul groupwise profile ...`.
#[derive(Debug, Subcommand)]
enum ProfileOp {
    /// Create a profile.
    Add {
        /// Its name.
        name: String,
        /// Reload's backup area, holding <TAG>/<PO>/ for each backup.
        #[arg(long)]
        backups: PathBuf,
        /// The post office directory's name in each backup.
        #[arg(long, default_value = "po1")]
        po: String,
        /// The new post office: a local directory, or quic://HOST:PORT/PATH on a `haul serve`.
        #[arg(long)]
        target: String,
        #[command(flatten)]
        access: TargetArgs,
    },
    /// List the profiles.
    List,
    /// Show a profile and what the workflow did for it.
    Show {
        /// The profile.
        name: String,
    },
    /// Post migration step 7: point the profile at the post office's new location
    /// (Reload's Profiles | Advanced | Connectivity).
    SetTarget {
        /// The profile.
        name: String,
        /// The new location: a local directory or quic://HOST:PORT/PATH.
        target: String,
        #[command(flatten)]
        access: TargetArgs,
    },
}

/// Runs `haul groupwise ...`; returns the exit code.
pub(crate) async fn groupwise(args: GroupwiseArgs) -> u8 {
    let mode = Mode::pick(args.json);
    match run(args, mode).await {
        Ok(code) => code,
        Err(e) => {
            let code = e
                .downcast_ref::<GwError>()
                .map_or_else(|| crate::exit_code(&e), GwError::exit_code);
            output::fatal(mode, &e, code);
            code
        }
    }
}

fn print<T: Serialize>(mode: Mode, event: &str, value: &T, text: impl FnOnce() -> String) {
    if mode == Mode::Json {
        let mut value = serde_json::to_value(value).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("event".into(), event.into());
        }
        output::json_line(&value);
    } else {
        println!("{}", text());
    }
}

fn open_db(state: Option<&PathBuf>) -> anyhow::Result<StateDb> {
    Ok(match state {
        Some(dir) => StateDb::open(dir)?,
        None => StateDb::open_default()?,
    })
}

/// The profile's target, resolved with the same URL and credential rules as `haul push`.
async fn resolve(profile: &Profile) -> anyhow::Result<Target> {
    if !Target::is_remote(&profile.target) {
        return Ok(Target::Local(PathBuf::from(&profile.target)));
    }
    let url = crate::parse_url(std::ffi::OsStr::new(&profile.target)).await?;
    let remote = RemoteArgs {
        fingerprint: profile.fingerprint.clone(),
        known_hosts: profile.known_hosts.clone(),
        token_file: profile.token_file.clone(),
        congestion: CongestionArg::Tolerant,
    };
    let (trust, token, _) = crate::trust_and_token(&remote)
        .with_context(|| format!("profile {}'s target {}", profile.name, profile.target))?;
    let mut path = String::from_utf8(url.path).context("the target path is not valid UTF-8")?;
    while path.ends_with('/') {
        path.pop();
    }
    if path.is_empty() {
        return Err(anyhow!(
            "the target {} names no post office directory; write quic://HOST:PORT/po1",
            profile.target
        ));
    }
    Ok(Target::Remote {
        host: RemoteTarget {
            addr: url.addr,
            host_key: url.host_key,
            trust,
            token,
            holder: None,
        },
        path,
    })
}

async fn run(args: GroupwiseArgs, mode: Mode) -> anyhow::Result<u8> {
    let state = args.state.as_ref();
    match args.cmd {
        GroupwiseCmd::Sample {
            dir,
            size,
            backups,
            seed,
            blobs,
            po,
        } => {
            let spec = SampleSpec {
                size,
                backups,
                seed,
                blobs,
                po,
            };
            let report = tokio::task::spawn_blocking(move || sample::generate(&dir, &spec))
                .await
                .map_err(|e| anyhow!("the sample generator failed: {e}"))??;
            print(mode, "sample", &report, || {
                let mut text = format!("sample backup area in {}:", report.dir.display());
                for b in &report.backups {
                    text.push_str(&format!(
                        "\n  {}  {}: {} files, {} ({} BLOBs, {}), backup took {}",
                        b.info.tag,
                        b.path.display(),
                        b.files,
                        format_bytes(b.bytes),
                        b.blobs,
                        format_bytes(b.blob_bytes),
                        format_duration(b.info.duration_s)
                    ));
                }
                text
            });
            Ok(0)
        }
        GroupwiseCmd::Profile { op } => profile_op(open_db(state)?, op, mode),
        GroupwiseCmd::Check { name } => {
            let db = open_db(state)?;
            let profile = profile::get(&db, &name)?;
            let target = resolve(&profile).await?;
            let report = care::check(&db, &profile, &target).await;
            print(mode, "check", &report, || {
                let mark = |ok: bool| if ok { "ok" } else { "FAILED" };
                let mut text = format!(
                    "target {}\n  reachable:   {}\n  credentials: {}\n  test file:   {} \
                     (created and removed)",
                    report.target,
                    mark(report.reachable),
                    mark(report.credentials),
                    mark(report.write_test)
                );
                if let (Some(space), Some(step)) = (&report.space, report.next_step) {
                    text.push_str(&format!(
                        "\n  free space:  {} free; the {} needs {} ({} already in place, {} \
                         kept by renamed-aside copies)",
                        format_bytes(space.free_bytes),
                        step.name(),
                        format_bytes(space.need_bytes),
                        format_bytes(space.in_place_bytes),
                        format_bytes(space.kept_aside_bytes)
                    ));
                }
                for problem in &report.problems {
                    text.push_str(&format!("\n  problem: {problem}"));
                }
                text
            });
            Ok(if report.ok() { 0 } else { 1 })
        }
        GroupwiseCmd::Premigrate {
            name,
            backup,
            dry_run,
        } => {
            step(
                state,
                mode,
                &name,
                StepKind::Premigrate,
                backup,
                None,
                dry_run,
            )
            .await
        }
        GroupwiseCmd::Migrate {
            name,
            backup,
            before,
            dry_run,
        } => {
            step(
                state,
                mode,
                &name,
                StepKind::Migrate,
                backup,
                before,
                dry_run,
            )
            .await
        }
        GroupwiseCmd::Verify { name, backup } => {
            let db = open_db(state)?;
            let profile = profile::get(&db, &name)?;
            let target = resolve(&profile).await?;
            let report = verify::verify(&db, &profile, &target, backup.as_deref()).await?;
            print(mode, "verify", &report, || {
                if report.ok() {
                    format!(
                        "verify passed: {} matches backup {}: {} files ({}) identical by \
                         BLAKE3; ofuser/ and ofmsg/ hold data",
                        report.target,
                        report.backup,
                        report.files_checked,
                        format_bytes(report.bytes_checked)
                    )
                } else {
                    let mut text = format!(
                        "verify FAILED: {} differs from backup {} in {} ways; do not load the \
                         POA:",
                        report.target,
                        report.backup,
                        report.differences.len()
                    );
                    for d in &report.differences {
                        text.push_str(&format!("\n  {d}"));
                    }
                    text
                }
            });
            Ok(if report.ok() { 0 } else { 1 })
        }
        GroupwiseCmd::Cleanup { name, delete } => {
            let db = open_db(state)?;
            let profile = profile::get(&db, &name)?;
            let target = resolve(&profile).await?;
            let report = care::cleanup(&db, &profile, &target, delete).await?;
            let now = haul_groupwise::clock::now_ms();
            print(mode, "cleanup", &report, || {
                if report.asides.is_empty() {
                    return "no renamed-aside duplicates on the target".to_string();
                }
                let mut text = format!(
                    "{} renamed-aside duplicates, {}{}:",
                    report.asides.len(),
                    format_bytes(report.bytes),
                    if report.deleted { ", deleted" } else { "" }
                );
                for a in &report.asides {
                    text.push_str(&format!(
                        "\n  {:<12} {:>12}  {:>6} files  {} old  (older copy of {})",
                        a.path,
                        format_bytes(a.bytes),
                        a.files,
                        format_duration(((now - a.since_ms).max(0) / 1000) as f64),
                        a.of
                    ));
                }
                if !report.deleted {
                    text.push_str(&format!(
                        "\nonce it is safe: haul groupwise cleanup {name} --delete"
                    ));
                }
                text
            });
            Ok(0)
        }
        GroupwiseCmd::Log { name, limit } => {
            let db = open_db(state)?;
            let lines = care::log(&db, &name, limit)?;
            if mode == Mode::Json {
                for line in &lines {
                    print(mode, "log", line, String::new);
                }
            } else {
                for line in &lines {
                    println!("{}", care::log_line(line));
                }
            }
            Ok(0)
        }
        GroupwiseCmd::Estimate {
            name,
            backup_time,
            post_time,
            buffer,
        } => {
            let db = open_db(state)?;
            let profile = profile::get(&db, &name)?;
            let target = resolve(&profile).await?;
            let input = care::EstimateInput {
                backup_time_s: backup_time,
                post_time_s: post_time,
                buffer_pct: Some(buffer),
            };
            let report = care::estimate(&profile, &target, &input).await?;
            print(mode, "estimate", &report, || report.to_string());
            Ok(0)
        }
    }
}

fn profile_op(db: StateDb, op: ProfileOp, mode: Mode) -> anyhow::Result<u8> {
    match op {
        ProfileOp::Add {
            name,
            backups,
            po,
            target,
            access,
        } => {
            let backups = std::path::absolute(&backups).unwrap_or(backups);
            let target = if Target::is_remote(&target) {
                target
            } else {
                std::path::absolute(&target)
                    .map(|p| p.display().to_string())
                    .unwrap_or(target)
            };
            let new = Profile {
                name,
                backups,
                po,
                target,
                fingerprint: access.fingerprint,
                token_file: access
                    .token_file
                    .map(|f| std::path::absolute(&f).unwrap_or(f)),
                known_hosts: access.known_hosts,
                state: Default::default(),
            };
            profile::add(&db, &new)?;
            let found = haul_groupwise::backup::list(&new.backups, &new.po).unwrap_or_default();
            print(mode, "profile", &new, || {
                format!(
                    "profile {} created: post office {} from {} ({} backups found{}), target {}",
                    new.name,
                    new.po,
                    new.backups.display(),
                    found.len(),
                    found
                        .last()
                        .map_or(String::new(), |b| format!(", newest {}", b.tag)),
                    new.target
                )
            });
        }
        ProfileOp::List => {
            let all = profile::list(&db)?;
            if mode == Mode::Json {
                for p in &all {
                    print(mode, "profile", p, String::new);
                }
            } else if all.is_empty() {
                println!("no profiles; create one with `haul groupwise profile add`");
            } else {
                for p in &all {
                    println!(
                        "{:<16} {} -> {}",
                        p.name,
                        p.backups.join(&p.po).display(),
                        p.target
                    );
                }
            }
        }
        ProfileOp::Show { name } => {
            let p = profile::get(&db, &name)?;
            print(mode, "profile", &p, || show(&p));
        }
        ProfileOp::SetTarget {
            name,
            target,
            access,
        } => {
            let target = if Target::is_remote(&target) {
                target
            } else {
                std::path::absolute(&target)
                    .map(|p| p.display().to_string())
                    .unwrap_or(target)
            };
            let p = profile::set_target(
                &db,
                &name,
                &target,
                access.fingerprint,
                access
                    .token_file
                    .map(|f| std::path::absolute(&f).unwrap_or(f)),
            )?;
            print(mode, "profile", &p, || {
                format!("profile {} now points at {}", p.name, p.target)
            });
        }
    }
    Ok(0)
}

fn show(p: &Profile) -> String {
    let step = |label: &str, r: &Option<profile::StepRecord>| match r {
        Some(r) => format!(
            "\n  {label}: backup {}, {} in {}, {} sent",
            r.backup,
            haul_groupwise::clock::format_utc(r.started_ms),
            format_duration(r.duration_s()),
            format_bytes(r.bytes_sent)
        ),
        None => format!("\n  {label}: never"),
    };
    let mut text = format!(
        "profile {}\n  post office: {}\n  backups:     {}\n  target:      {}",
        p.name,
        p.po,
        p.backups.display(),
        p.target
    );
    if let Some(fp) = &p.fingerprint {
        text.push_str(&format!("\n  fingerprint: {fp}"));
    }
    if let Some(t) = &p.token_file {
        text.push_str(&format!("\n  token file:  {}", t.display()));
    }
    text.push_str(&step("last pre-migration", &p.state.last_premigrate));
    text.push_str(&step("last full migration", &p.state.last_migrate));
    if let Some(ip) = &p.state.in_progress {
        text.push_str(&format!(
            "\n  interrupted full migration of backup {} (run migrate again to continue)",
            ip.backup
        ));
    }
    if !p.state.asides.is_empty() {
        let names: Vec<&str> = p.state.asides.keys().map(String::as_str).collect();
        text.push_str(&format!("\n  renamed-aside copies: {}", names.join(", ")));
    }
    text
}

/// A pre-migration or full migration: plan, then (unless a dry run) run, with progress.
async fn step(
    state: Option<&PathBuf>,
    mode: Mode,
    name: &str,
    kind: StepKind,
    backup: Option<String>,
    before: Option<String>,
    dry_run: bool,
) -> anyhow::Result<u8> {
    let db = open_db(state)?;
    let profile = profile::get(&db, name)?;
    let target = resolve(&profile).await?;
    let plan = migrate::plan(&profile, &target, kind, backup.as_deref()).await?;
    if dry_run {
        print(mode, "plan", &plan, || {
            let mut text = format!(
                "{} of profile {} would copy backup {} ({}) to {}",
                kind.name(),
                plan.profile,
                plan.backup.tag,
                plan.backup.path.display(),
                plan.target
            );
            if !plan.rename_aside.is_empty() {
                text.push_str(&format!(
                    "\n  renamed aside and copied anew: {}",
                    plan.rename_aside.join(", ")
                ));
            }
            if !plan.continued.is_empty() {
                text.push_str(&format!(
                    "\n  continued from the interrupted run: {}",
                    plan.continued.join(", ")
                ));
            }
            text.push_str(&format!(
                "\n  space: {} needed ({} to copy, {} already in place), {} free{}",
                format_bytes(plan.space.need_bytes),
                format_bytes(plan.space.source_bytes),
                format_bytes(plan.space.in_place_bytes),
                format_bytes(plan.space.free_bytes),
                if plan.space.fits() {
                    ""
                } else {
                    ": NOT ENOUGH, expand the storage"
                }
            ));
            text
        });
        return Ok(0);
    }
    let ticker: Arc<Mutex<Option<output::Ticker>>> = Arc::default();
    let bar_events: Arc<Mutex<Option<haul_engine::EventSink>>> = Arc::default();
    let sink: haul_groupwise::StepSink = {
        let (ticker, bar_events) = (ticker.clone(), bar_events.clone());
        Arc::new(move |event| match event {
            StepEvent::Transfer(progress) => {
                let started = output::Ticker::start(mode, progress);
                *bar_events.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(output::event_sink(mode, started.bar.clone()));
                *ticker.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
            }
            StepEvent::Note(message) => {
                if mode == Mode::Json {
                    output::json_line(&serde_json::json!({"event": "log", "message": message}));
                } else {
                    let guard = ticker.lock().unwrap_or_else(|p| p.into_inner());
                    match guard.as_ref().and_then(|t| t.bar.as_ref()) {
                        Some(bar) => bar.println(format!("haul groupwise: {message}")),
                        None => eprintln!("haul groupwise: {message}"),
                    }
                }
            }
            StepEvent::Job(event) => match *event {
                JobEvent::Engine(event) => {
                    let sink = bar_events.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some(events) = sink {
                        events(event);
                    }
                }
                JobEvent::Retrying { attempt, error } => {
                    eprintln!("haul groupwise: connection lost ({error}); attempt {attempt}");
                }
                _ => {}
            },
        })
    };
    let result = migrate::execute(&db, &target, plan, before.as_deref(), sink).await;
    if let Some(t) = ticker.lock().unwrap_or_else(|p| p.into_inner()).take() {
        t.stop();
    }
    let report = result?;
    if mode == Mode::Json {
        if let Ok(serde_json::Value::Object(mut map)) = serde_json::to_value(&report.summary) {
            map.insert("event".into(), "summary".into());
            map.insert("step".into(), kind.name().into());
            map.insert("backup".into(), report.plan.backup.tag.clone().into());
            map.insert("duration_s".into(), report.duration_s.into());
            map.insert(
                "rename_aside".into(),
                serde_json::to_value(&report.plan.rename_aside).unwrap_or_default(),
            );
            output::json_line(&serde_json::Value::Object(map));
        }
    } else {
        let s = &report.summary;
        println!(
            "{} of {} done in {}: backup {}, {} files ({}), {} sent over the network, {} \
             reused on the target, {} removed, {} renamed aside",
            kind.name(),
            name,
            format_duration(report.duration_s),
            report.plan.backup.tag,
            s.files_transferred,
            format_bytes(s.bytes_total),
            format_bytes(s.bytes_sent),
            format_bytes(s.bytes_reused),
            s.deleted_total,
            report.renamed.len()
        );
    }
    Ok(0)
}
