//! `haul protect ...`: protection relationships (Protection Manager) and their migration
//! between management servers, rendered for a person or as JSON with `--json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use haul_engine::job::JobEvent;
use haul_protect::{Check, Dataset, Events, Host, Kind, Policy, ProtectError, Server, host_key};
use serde::Serialize;

use crate::output::{self, Mode};

/// The management server's directory and clock, shared by every `haul protect` command.
#[derive(Debug, Args)]
pub(crate) struct ProtectArgs {
    /// The management server: a state directory (SQLite, openable with sqlite3), created on
    /// first use with a fresh server id. Two servers on one machine are two directories.
    #[arg(long, env = "HAUL_PROTECT_SERVER", global = true)]
    server: Option<PathBuf>,
    /// The server clock, Unix seconds (default: now): schedules and expiry are judged at
    /// this time.
    #[arg(long, env = "HAUL_NOW", global = true)]
    now: Option<i64>,
    /// How long a host may take to answer before it counts as down (e.g. 10s).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Print results as JSON (one object per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ProtectCommand,
}

#[derive(Debug, Subcommand)]
enum ProtectCommand {
    /// The server's id and settings (max-fan-in, reaper-cleanup-mode, rebaseline-mode).
    Server {
        #[command(subcommand)]
        op: ServerOp,
    },
    /// Storage hosts (`haul serve` receivers) this server protects data onto.
    Host {
        #[command(subcommand)]
        op: HostOp,
    },
    /// Protection policies: schedule, retention period and count, throttle, scripts.
    Policy {
        #[command(subcommand)]
        op: PolicyOp,
    },
    /// Datasets: a policy and the relationships (and backups) it owns.
    Dataset {
        #[command(subcommand)]
        op: DatasetOp,
    },
    /// Relationships this server owns: a local source replicated to HOST:PATH.
    Relationship {
        #[command(subcommand)]
        op: RelationshipOp,
    },
    /// Update a relationship now (an on-demand backup job): push what changed, then take a
    /// backup (a snapshot of the destination on the host) recorded for its dataset.
    Update {
        /// The relationship, HOST:PATH.
        relationship: String,
    },
    /// Run every update that is due and every expiry, at the server clock (for cron or a
    /// systemd timer). A host that is down is reported and the others go on; exits 1 if
    /// anything failed.
    Tick,
    /// Every relationship recorded on the registered hosts, owned by this server or
    /// external (owned by another server, or relinquished and waiting for an import).
    Discover,
    /// Migration step 1, on the old server: relinquish relationships from their dataset,
    /// remove the primary and secondary members, and check they now show as external. The
    /// dataset is not deleted or suspended: it keeps its backups for restores and expiry.
    /// Relationships that fan in to one destination volume must be given together.
    Relinquish {
        /// The relationships, HOST:PATH.
        #[arg(required = true)]
        relationships: Vec<String>,
    },
    /// Migration step 2, on the new server: import external relationships into an (empty)
    /// dataset with the right policy. No re-baseline: the next update sends only what
    /// changed. Relationships that fan in to one destination volume must be given together.
    Import {
        /// The relationships, HOST:PATH.
        #[arg(required = true)]
        relationships: Vec<String>,
        /// The dataset that takes them over.
        #[arg(long)]
        dataset: String,
    },
    /// The backups of a relationship on its host, by whichever server made them.
    Backups {
        /// The relationship, HOST:PATH.
        relationship: String,
    },
    /// Pull a backup back into a local directory, every chunk verified by BLAKE3.
    Restore {
        /// The relationship, HOST:PATH.
        relationship: String,
        /// The backup's id (`haul protect backups REL`).
        #[arg(long)]
        backup: String,
        /// Where the restored tree goes.
        #[arg(long)]
        to: PathBuf,
    },
    /// The checklist before migrating relationships from OLD to NEW: hosts registered,
    /// resolvable and reachable from NEW with valid credentials, policies and server
    /// settings identical, scripts present, every relationship already discovered as
    /// external on NEW, and no update scheduled inside the window. Exits 1 on any failure.
    Preflight {
        /// The old server's directory.
        #[arg(long)]
        from: PathBuf,
        /// The new server's directory.
        #[arg(long)]
        to: PathBuf,
        /// The planned migration window, START..END in Unix seconds.
        #[arg(long, value_parser = parse_window)]
        window: Option<(i64, i64)>,
        /// Only these relationships (default: every one OLD owns).
        #[arg(long = "relationship")]
        relationships: Vec<String>,
    },
    /// The audit log: every state change on this server.
    Log {
        /// How many lines.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum ServerOp {
    /// The server's id and settings.
    Show,
    /// Change a setting: max-fan-in N, reaper-cleanup-mode automatic|orphans|never,
    /// rebaseline-mode never|allowed.
    Set {
        /// The setting.
        name: String,
        /// Its value.
        value: String,
    },
}

#[derive(Debug, Subcommand)]
enum HostOp {
    /// Register a host: its address, the certificate fingerprint `haul serve` printed, and
    /// a token file (kept as a path; the token stays in its 0600 file).
    Add {
        /// The name this server knows it by.
        name: String,
        /// quic://HOST:PORT
        url: String,
        /// The certificate fingerprint (sha256:...).
        #[arg(long)]
        fingerprint: String,
        /// The token file.
        #[arg(long)]
        token_file: PathBuf,
    },
    /// The registered hosts.
    List,
    /// Diagnose connectivity: name resolution, reachability, the fingerprint, the token and
    /// its scope (look, read, write). Exits 1 on any failure.
    Diagnose {
        /// The host.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyOp {
    /// Create or replace a policy.
    Add {
        /// Its name.
        name: String,
        /// The schedule: update every DURATION (30s, 15m, 1h, 1d), at multiples of it.
        #[arg(long, value_parser = parse_seconds)]
        every: u64,
        /// Backups older than this may expire (e.g. 7d).
        #[arg(long, value_parser = parse_seconds)]
        retention_period: u64,
        /// The newest N backups are always kept.
        #[arg(long)]
        retention_count: u32,
        /// The throttle: a bandwidth limit for updates (50M, 400mbit; a bare number is KiB/s).
        #[arg(long, value_parser = crate::args::parse_rate)]
        throttle: Option<u64>,
        /// A script run before each update (a failure skips it).
        #[arg(long)]
        pre_script: Option<PathBuf>,
        /// A script run after each backup.
        #[arg(long)]
        post_script: Option<PathBuf>,
    },
    /// Show a policy (or all).
    Show {
        /// The policy.
        name: Option<String>,
    },
    /// Compare a policy (or, with --settings, the server settings) with another server's.
    /// Exits 1 when they differ.
    Diff {
        /// The policy.
        name: Option<String>,
        /// The other server's directory.
        #[arg(long)]
        against: PathBuf,
        /// Compare the server settings instead.
        #[arg(long)]
        settings: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DatasetOp {
    /// Create an empty dataset with a policy.
    Create {
        /// Its name.
        name: String,
        /// Its protection policy.
        #[arg(long)]
        policy: String,
    },
    /// Every dataset and its status.
    List,
    /// One dataset's status, relationships and backups.
    Show {
        /// The dataset.
        name: String,
    },
    /// Delete a dataset that owns no relationships and keeps no backups.
    Delete {
        /// The dataset.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum RelationshipOp {
    /// Create a relationship: SOURCE (a local directory) replicated to HOST:PATH, recorded on
    /// the host's registry as owned by DATASET on this server. Nothing moves until the first
    /// update.
    Create {
        /// The owning dataset.
        #[arg(long)]
        dataset: String,
        /// The source directory.
        #[arg(long)]
        source: PathBuf,
        /// HOST:PATH, HOST as registered, PATH under its token's grant (the first component
        /// is the destination volume).
        #[arg(long)]
        dest: String,
        /// mirror (the destination is made identical, removing what the source no longer
        /// has) or backup (nothing is removed).
        #[arg(long, value_enum)]
        kind: KindArg,
    },
    /// The relationships this server owns.
    List,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KindArg {
    Mirror,
    Backup,
}

/// Runs one `haul protect` command; returns the exit code.
pub(crate) async fn protect(args: ProtectArgs) -> u8 {
    let mode = Mode::pick(args.json);
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            let code = e
                .downcast_ref::<ProtectError>()
                .map_or_else(|| crate::exit_code(&e), ProtectError::exit_code);
            output::fatal(mode, &e, code);
            code
        }
    }
}

fn open(dir: Option<&PathBuf>) -> anyhow::Result<Server> {
    let dir = dir.ok_or_else(|| {
        anyhow!("no management server: pass --server DIR or set HAUL_PROTECT_SERVER")
    })?;
    Ok(Server::open(dir)?)
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce()) {
    if json {
        if let Ok(v) = serde_json::to_value(value) {
            output::json_line(&v);
        }
    } else {
        human();
    }
}

fn checklist(json: bool, checks: &[Check]) -> u8 {
    let ok = checks.iter().all(|c| c.ok);
    print(
        json,
        &serde_json::json!({"ok": ok, "checks": checks}),
        || {
            for c in checks {
                println!(
                    "[{}] {}: {}",
                    if c.ok { "pass" } else { "FAIL" },
                    c.item,
                    c.detail
                );
            }
            println!(
                "{}",
                if ok {
                    "all checks passed"
                } else {
                    "some checks failed"
                }
            );
        },
    );
    u8::from(!ok)
}

/// Events of a running update or restore, for `mode`.
fn events(mode: Mode) -> Events {
    Arc::new(move |event: JobEvent| match (&event, mode) {
        (JobEvent::PausedForSpace { message, .. }, _) => eprintln!("haul protect: {message}"),
        (JobEvent::Retrying { attempt, error }, _) => {
            eprintln!("haul protect: retrying (attempt {attempt}): {error}")
        }
        (JobEvent::Engine(e), Mode::Bars | Mode::Quiet) => {
            if let haul_engine::Event::Warning { .. } = e {
                eprintln!("haul protect: {e:?}");
            }
        }
        _ => {}
    })
}

async fn run(args: ProtectArgs) -> anyhow::Result<u8> {
    let json = args.json;
    let mode = Mode::pick(json);
    let now = args.now.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    let timeout = args.connect_timeout;
    if let ProtectCommand::Preflight {
        from,
        to,
        window,
        relationships,
    } = &args.command
    {
        let old = Server::open(from)?;
        let new = Server::open(to)?;
        let checks = haul_protect::preflight(&old, &new, relationships, *window, timeout).await?;
        return Ok(checklist(json, &checks));
    }
    let mut server = open(args.server.as_ref())?;
    match args.command {
        ProtectCommand::Preflight { .. } => unreachable!("handled above"),
        ProtectCommand::Server { op } => match op {
            ServerOp::Show => {
                let info = server.info().clone();
                print(json, &info, || {
                    println!("server {} ({})", info.id, server.dir().display());
                    for (k, v) in info.settings.pairs() {
                        println!("  {k} = {v}");
                    }
                });
            }
            ServerOp::Set { name, value } => {
                server.set_setting(&name, &value)?;
                let info = server.info().clone();
                print(json, &info, || println!("{name} = {value}"));
            }
        },
        ProtectCommand::Host { op } => match op {
            HostOp::Add {
                name,
                url,
                fingerprint,
                token_file,
            } => {
                host_key(&url)?;
                let token_file = std::path::absolute(&token_file)
                    .with_context(|| format!("bad token file path {}", token_file.display()))?;
                haul_net::Token::load(&token_file)?;
                fingerprint.parse::<haul_net::Fingerprint>()?;
                let host = Host {
                    name,
                    url,
                    fingerprint,
                    token_file,
                };
                server.put_host(&host)?;
                print(json, &host, || {
                    println!("host {} registered at {}", host.name, host.url)
                });
            }
            HostOp::List => {
                let hosts = server.hosts()?;
                print(json, &hosts, || {
                    for h in &hosts {
                        println!("{}\t{}\t{}", h.name, h.url, h.fingerprint);
                    }
                });
            }
            HostOp::Diagnose { name } => {
                let host = server.host(&name)?;
                let checks = haul_protect::diagnose(&host, timeout).await;
                return Ok(checklist(json, &checks));
            }
        },
        ProtectCommand::Policy { op } => match op {
            PolicyOp::Add {
                name,
                every,
                retention_period,
                retention_count,
                throttle,
                pre_script,
                post_script,
            } => {
                let policy = Policy {
                    name,
                    every_s: every,
                    retention_period_s: retention_period,
                    retention_count,
                    throttle,
                    pre_script: pre_script.map(|p| std::path::absolute(&p).unwrap_or(p)),
                    post_script: post_script.map(|p| std::path::absolute(&p).unwrap_or(p)),
                };
                server.put_policy(&policy)?;
                print(json, &policy, || println!("policy {} stored", policy.name));
            }
            PolicyOp::Show { name } => {
                let policies = match name {
                    Some(n) => vec![server.policy(&n)?],
                    None => server.policies()?,
                };
                print(json, &policies, || {
                    for p in &policies {
                        println!(
                            "{}: every {}s, retention {}s keeping the newest {}, throttle {}",
                            p.name,
                            p.every_s,
                            p.retention_period_s,
                            p.retention_count,
                            p.throttle.map_or("none".into(), |t| format!("{t} bytes/s"))
                        );
                        for (what, s) in [("pre", &p.pre_script), ("post", &p.post_script)] {
                            if let Some(s) = s {
                                println!("  {what}-script {}", s.display());
                            }
                        }
                    }
                });
            }
            PolicyOp::Diff {
                name,
                against,
                settings,
            } => {
                let other = Server::open(&against)?;
                let diff = if settings {
                    haul_protect::settings_differences(
                        &server.info().settings,
                        &other.info().settings,
                    )
                } else {
                    let name = name
                        .ok_or_else(|| anyhow!("name the policy to compare, or pass --settings"))?;
                    haul_protect::policy_differences(
                        server.find_policy(&name)?.as_ref(),
                        other.find_policy(&name)?.as_ref(),
                    )
                };
                print(
                    json,
                    &serde_json::json!({"identical": diff.is_empty(), "differences": diff}),
                    || {
                        if diff.is_empty() {
                            println!("identical");
                        }
                        for d in &diff {
                            println!(
                                "{}: {} here, {} on {}",
                                d.field,
                                d.here,
                                d.there,
                                against.display()
                            );
                        }
                    },
                );
                return Ok(u8::from(!diff.is_empty()));
            }
        },
        ProtectCommand::Dataset { op } => match op {
            DatasetOp::Create { name, policy } => {
                server.policy(&policy)?;
                if server.datasets()?.iter().any(|d| d.name == name) {
                    bail!("dataset {name} exists already");
                }
                let dataset = Dataset {
                    name,
                    policy,
                    created_at: now,
                    relinquished_any: false,
                };
                server.put_dataset(&dataset)?;
                server.audit(&format!(
                    "dataset {} created with policy {}",
                    dataset.name, dataset.policy
                ))?;
                print(json, &dataset, || {
                    println!("dataset {} created (empty)", dataset.name)
                });
            }
            DatasetOp::List | DatasetOp::Show { .. } => {
                let only = match &op {
                    DatasetOp::Show { name } => {
                        server.dataset(name)?;
                        Some(name.clone())
                    }
                    _ => None,
                };
                let statuses: Vec<_> = haul_protect::dataset_statuses(&server)?
                    .into_iter()
                    .filter(|s| only.as_ref().is_none_or(|n| *n == s.name))
                    .collect();
                let value: serde_json::Value = match only {
                    Some(_) => serde_json::to_value(&statuses[0])?,
                    None => serde_json::to_value(&statuses)?,
                };
                print(json, &value, || {
                    for s in &statuses {
                        println!(
                            "{}\tpolicy {}\t{} relationships\t{} backups\t{}",
                            s.name,
                            s.policy,
                            s.relationships.len(),
                            s.backups,
                            s.status
                        );
                        for r in &s.relationships {
                            println!("  {r}");
                        }
                    }
                });
            }
            DatasetOp::Delete { name } => {
                let status = haul_protect::dataset_statuses(&server)?
                    .into_iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| anyhow!("no dataset {name}"))?;
                if !status.relationships.is_empty() || status.backups > 0 {
                    bail!(
                        "dataset {name} still owns {} relationships and {} backups; it is \
                         needed for their restores and expiry (status: {})",
                        status.relationships.len(),
                        status.backups,
                        status.status
                    );
                }
                server.delete_dataset(&name)?;
                server.audit(&format!("dataset {name} deleted"))?;
                print(json, &serde_json::json!({"deleted": name}), || {
                    println!("dataset {name} deleted")
                });
            }
        },
        ProtectCommand::Relationship { op } => match op {
            RelationshipOp::Create {
                dataset,
                source,
                dest,
                kind,
            } => {
                let kind = match kind {
                    KindArg::Mirror => Kind::Mirror,
                    KindArg::Backup => Kind::Backup,
                };
                let created =
                    haul_protect::create(&server, &dataset, &source, &dest, kind, timeout).await?;
                print(json, &created, || {
                    println!(
                        "relationship {} ({}) created in dataset {}",
                        created.relationship.name,
                        kind.as_str(),
                        dataset
                    );
                    if !created.fan_in_with.is_empty() {
                        println!(
                            "  it fans in with {} (they migrate together)",
                            created.fan_in_with.join(", ")
                        );
                    }
                });
            }
            RelationshipOp::List => {
                let rels = server.relationships()?;
                print(json, &rels, || {
                    for r in &rels {
                        println!(
                            "{}\t{}\tdataset {}\tfrom {}\tlast update {}",
                            r.name,
                            r.kind.as_str(),
                            r.dataset,
                            r.source.display(),
                            r.last_update.map_or("never".into(), |t| t.to_string())
                        );
                    }
                });
            }
        },
        ProtectCommand::Update { relationship } => {
            let bar = spinner(mode, &format!("updating {relationship}"));
            let report =
                haul_protect::update(&server, &relationship, now, timeout, events(mode)).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let report = report?;
            print(json, &report, || {
                println!(
                    "updated {}: {} sent of {} ({} files changed); backup {} by dataset {}",
                    report.relationship,
                    indicatif::HumanBytes(report.summary.bytes_sent),
                    indicatif::HumanBytes(report.summary.bytes_total),
                    report
                        .summary
                        .files_transferred
                        .saturating_sub(report.summary.files_unchanged),
                    report.backup.id,
                    report.dataset
                )
            });
        }
        ProtectCommand::Tick => {
            let bar = spinner(mode, "running due updates and expiry");
            let report = haul_protect::tick(&server, now, timeout, events(mode)).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let report = report?;
            print(json, &report, || {
                println!("tick at {}", report.now);
                for u in &report.updates {
                    match (&u.report, &u.error) {
                        (Some(r), _) => println!(
                            "  updated {}: {} sent; backup {}",
                            u.relationship,
                            indicatif::HumanBytes(r.summary.bytes_sent),
                            r.backup.id
                        ),
                        (None, Some(e)) => println!("  FAILED {}: {e}", u.relationship),
                        (None, None) => {}
                    }
                }
                for e in &report.expired {
                    match &e.error {
                        None => println!(
                            "  expired backup {} of {} (dataset {})",
                            e.backup.id, e.backup.relationship, e.backup.dataset
                        ),
                        Some(err) => println!("  kept backup {} for now: {err}", e.backup.id),
                    }
                }
                for h in &report.hosts_down {
                    println!("  host {h} is down; its work waits for a later tick");
                }
                if report.updates.is_empty() && report.expired.is_empty() {
                    println!("  nothing due");
                }
            });
            return Ok(u8::from(report.has_errors()));
        }
        ProtectCommand::Discover => {
            let found = haul_protect::discover(&server, timeout).await?;
            print(json, &found, || {
                for d in &found.relationships {
                    let who = match (&d.ownership, &d.owner) {
                        (haul_protect::Ownership::Owned, Some(o)) => {
                            format!("owned (dataset {})", o.dataset)
                        }
                        (_, Some(o)) => format!("external (owned by {o})"),
                        (_, None) => "external (relinquished; import it)".into(),
                    };
                    println!("{}\t{}\tfrom {}\t{who}", d.name, d.kind.as_str(), d.source);
                }
                for u in &found.unreachable {
                    println!("host {} unreachable: {}", u.host, u.error);
                }
            });
            return Ok(u8::from(!found.unreachable.is_empty()));
        }
        ProtectCommand::Relinquish { relationships } => {
            let moved = haul_protect::relinquish(&server, &relationships, timeout).await?;
            print(json, &moved, || {
                for (i, s) in moved.steps.iter().enumerate() {
                    println!("{}. {s}", i + 1);
                }
            });
        }
        ProtectCommand::Import {
            relationships,
            dataset,
        } => {
            let moved = haul_protect::import(&server, &relationships, &dataset, timeout).await?;
            print(json, &moved, || {
                for s in &moved.steps {
                    println!("{s}");
                }
                println!(
                    "dataset {dataset} warns \"no backup history exists\" until its first \
                     update (`haul protect update REL` or the next tick)"
                );
            });
        }
        ProtectCommand::Backups { relationship } => {
            let list = haul_protect::list_backups(&server, &relationship, timeout).await?;
            print(json, &list, || {
                for b in &list {
                    println!(
                        "{}\tserver {}\tdataset {}\tat {}{}",
                        b.id,
                        b.server.as_deref().unwrap_or("?"),
                        b.dataset.as_deref().unwrap_or("?"),
                        b.at.map_or("?".into(), |t| t.to_string()),
                        if b.ours { "\t(ours)" } else { "" }
                    );
                }
            });
        }
        ProtectCommand::Restore {
            relationship,
            backup,
            to,
        } => {
            let bar = spinner(mode, &format!("restoring {relationship} from {backup}"));
            let report =
                haul_protect::restore(&server, &relationship, &backup, &to, timeout, events(mode))
                    .await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let report = report?;
            print(json, &report, || {
                println!(
                    "restored backup {} of {} into {}: {} files, each verified by BLAKE3",
                    report.backup, report.relationship, report.to, report.files_verified
                )
            });
        }
        ProtectCommand::Log { limit } => {
            let lines = server.audit_log(limit)?;
            print(json, &lines, || {
                for l in &lines {
                    println!("{}\t{}", l.at_ms, l.message);
                }
            });
        }
    }
    Ok(0)
}

fn spinner(mode: Mode, message: &str) -> Option<indicatif::ProgressBar> {
    if mode != Mode::Bars {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(150));
    Some(bar)
}

/// A duration in seconds: 90, 30s, 15m, 2h, 7d.
fn parse_seconds(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 15m, 2h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("unknown unit in {s:?}; use s, m, h, d or w")),
    };
    Ok(n * mult)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs = parse_seconds(s)?;
    if secs == 0 {
        return Err("the timeout must be above 0".into());
    }
    Ok(Duration::from_secs(secs))
}

/// START..END, Unix seconds.
fn parse_window(s: &str) -> Result<(i64, i64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not a window; write START..END in Unix seconds"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| format!("{v:?} is not a time in Unix seconds"))
    };
    let (start, end) = (parse(a)?, parse(b)?);
    if end <= start {
        return Err("the window ends before it starts".into());
    }
    Ok((start, end))
}
