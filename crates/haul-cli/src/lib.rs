//! The `haul` command line: argument parsing, progress bars and output. Thin by design.
//!
//! Everything that moves data lives in `haul-engine`; this crate turns arguments into engine
//! calls, renders [`haul_engine::Event`]s and [`haul_engine::Progress`] (indicatif bars on a
//! terminal, JSON lines with `--json`), and maps errors to exit codes: 0 done, 1 error,
//! 3 paused for lack of space.
//!
//! # Must not depend on
//! Nothing depends on this crate except the `haul` binary. It must not contain transfer logic.

mod args;
mod elm_cmd;
mod groupwise_cmd;
mod output;
mod protect_cmd;
mod remote_cmd;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use haul_engine::job::{Endpoint, Job, JobEvent, RemoteEnd};
use haul_engine::jobs::{self, PushTarget, ServeOptions};
use haul_engine::{EngineError, Grant, TransferOptions};
use haul_net::{Fingerprint, Identity, Token, Trust};

use args::{Cli, Command, RemoteArgs, TransferArgs};
use output::Mode;

/// Runs the `haul` command line and returns the process exit code.
pub fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some((_, sub)) = matches.subcommand() {
        args::order_rules(&mut cli, sub);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HAUL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    raise_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("haul: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(dir) = cache_dir()
        && let Err(e) = haul_manifest::zeros::persist_in(&dir)
    {
        tracing::debug!(error = %e, dir = %dir.display(), "hole-hash cache stays in memory");
    }
    let code = runtime.block_on(run(cli));
    if let Err(e) = haul_manifest::zeros::save() {
        tracing::debug!(error = %e, "hole-hash cache not saved");
    }
    ExitCode::from(code)
}

/// Raises the soft limit on open files to the hard limit, as servers do: a receiver with
/// many sessions, and a sender with many streams reading ahead, hold a file each, and the
/// usual soft limit of 1,024 is a default for interactive shells, not for them. A failure
/// leaves the limit as it was.
fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "open-file limit left as it was");
        }
    }
}

/// Where haul keeps what it can always recompute (the hashes of hole chunks):
/// `$HAUL_CACHE_DIR`, else `$XDG_CACHE_HOME/haul`, else `$HOME/.cache/haul`; none without a
/// home (empty variables count as unset).
fn cache_dir() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HAUL_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("haul")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("haul")))
}

async fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Copy {
            src,
            dst,
            preserve_special_bits: _,
            via_quic,
            transfer,
        } => {
            let dest = Destination::Local { dst, via_quic };
            transfer_command(src, dest, transfer).await
        }
        Command::Push {
            src,
            dest,
            remote,
            transfer,
        } => remote_command(src, &dest, remote, transfer).await,
        Command::Plan {
            src,
            dst,
            remote,
            mut transfer,
        } => {
            transfer.dry_run = true;
            if !dst.as_bytes().starts_with(b"quic://") {
                let dest = Destination::Local {
                    dst: dst.into(),
                    via_quic: false,
                };
                return transfer_command(src, dest, transfer).await;
            }
            remote_command(src, &dst, remote, transfer).await
        }
        Command::Serve {
            root,
            listen,
            token_file,
            grant,
            config_dir,
            privileged,
            json,
        } => {
            let mode = if json { Mode::Json } else { Mode::Quiet };
            let access = Access {
                token_file,
                grant,
                privileged,
            };
            match serve(mode, root, listen, access, config_dir).await {
                Ok(()) => 0,
                Err(e) => {
                    let code = exit_code(&e);
                    output::fatal(mode, &e, code);
                    code
                }
            }
        }
        Command::Pull {
            src,
            dest,
            snapshot,
            remote,
            transfer,
        } => match pull_source(&src, snapshot, &remote).await {
            Ok(from) => {
                let dest = Destination::Pull {
                    from,
                    dst: dest.clone(),
                };
                transfer_command(dest_placeholder(&dest), dest, transfer).await
            }
            Err(e) => {
                output::fatal(Mode::pick(transfer.json), &e, 1);
                1
            }
        },
        Command::Remote { json, op } => remote_cmd::remote(op, json).await,
        Command::Snapshot { json, op } => remote_cmd::snapshot(op, json).await,
        Command::Protect(args) => protect_cmd::protect(args).await,
        Command::Groupwise(args) => groupwise_cmd::groupwise(args).await,
        Command::Elm { command } => elm_cmd::elm(command).await,
        Command::Hash { files } => hash(&files),
    }
}

/// A transfer to a running receiver: resolve and authenticate, then run it.
async fn remote_command(
    src: PathBuf,
    dest: &OsStr,
    remote: RemoteArgs,
    transfer: TransferArgs,
) -> u8 {
    match push_target(&src, dest, remote).await {
        Ok(target) => transfer_command(src, Destination::Remote(target), transfer).await,
        Err(e) => {
            output::fatal(Mode::pick(transfer.json), &e, 1);
            1
        }
    }
}

/// The token from `--token-file`, else from a non-empty `HAUL_TOKEN`.
fn given_token(token_file: Option<PathBuf>) -> anyhow::Result<Option<Token>> {
    Ok(match (token_file, std::env::var_os("HAUL_TOKEN")) {
        (Some(file), _) => Some(Token::load(&file)?),
        (None, Some(value)) if !value.is_empty() => Some(Token::from_bytes(value.as_bytes())),
        _ => None,
    })
}

/// Where a transfer goes.
enum Destination {
    /// `haul copy`: a local path, through the embedded receiver.
    Local { dst: PathBuf, via_quic: bool },
    /// `haul push`: a running receiver.
    Remote(PushTarget),
    /// `haul pull`: from a serving host into a local path.
    Pull {
        from: haul_engine::pull::PullSource,
        dst: PathBuf,
    },
}

fn options(args: &TransferArgs, src: &Path) -> anyhow::Result<TransferOptions> {
    Ok(TransferOptions {
        chunk_size: args.chunk_size,
        streams: usize::from(args.streams),
        list_files: args.list,
        checksum: args.checksum,
        dry_run: args.dry_run,
        rename_aside: args
            .rename_aside
            .iter()
            .map(|d| d.as_os_str().as_bytes().to_vec())
            .collect(),
        compress: match args.compress {
            args::CompressMode::Auto => haul_engine::compress::Compression::Auto,
            args::CompressMode::On => haul_engine::compress::Compression::On,
            args::CompressMode::Off => haul_engine::compress::Compression::Off,
        },
        bwlimit: args.bwlimit,
        owners: !args.no_owners,
        numeric_ids: args.numeric_ids,
        xattrs: !args.no_xattrs,
        hard_links: !args.no_hard_links,
        delete: args.delete,
        delete_excluded: args.delete_excluded,
        max_delete: args.max_delete,
        filter: filter(args, src)?.map(Arc::new),
        one_file_system: args.one_file_system,
        holder: args.lease_holder.clone(),
        ..TransferOptions::default()
    })
}

/// The filter the --include, --exclude, --exclude-from and --files-from options make.
fn filter(args: &TransferArgs, src: &Path) -> anyhow::Result<Option<haul_manifest::Filter>> {
    if args.rules.is_empty() && args.exclude_from.is_empty() && args.files_from.is_none() {
        return Ok(None);
    }
    let mut filter = haul_manifest::Filter::new();
    for (include, pattern) in &args.rules {
        filter = if *include {
            filter.include(pattern)?
        } else {
            filter.exclude(pattern)?
        };
    }
    for file in &args.exclude_from {
        filter = filter.exclude_from(file)?;
    }
    if let Some(list) = &args.files_from {
        filter = filter.files_from(src, list)?;
    }
    Ok(Some(filter))
}

/// A run being recorded in the state database. The database is a record, not a gate: when
/// it cannot be opened the transfer still runs, with a warning saying why.
struct RunRecorder {
    db: haul_state::StateDb,
    id: haul_state::RunId,
}

impl RunRecorder {
    fn start(dir: Option<&Path>, src: &Path, dest: &Destination) -> Option<RunRecorder> {
        let (kind, source, destination) = match dest {
            Destination::Local { dst, .. } => (
                haul_state::RunKind::Copy,
                src.display().to_string(),
                dst.display().to_string(),
            ),
            Destination::Remote(t) => (
                haul_state::RunKind::Push,
                src.display().to_string(),
                format!("quic://{}/{}", t.host_key, String::from_utf8_lossy(&t.dest)),
            ),
            Destination::Pull { from, dst } => (
                haul_state::RunKind::Pull,
                format!(
                    "quic://{}/{}",
                    from.host_key,
                    String::from_utf8_lossy(&from.path)
                ),
                dst.display().to_string(),
            ),
        };
        let opened = match dir {
            Some(dir) => haul_state::StateDb::open(dir),
            None => haul_state::StateDb::open_default(),
        };
        let db = match opened {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!("this run is not recorded in the state database: {e}");
                return None;
            }
        };
        let start = haul_state::RunStart {
            kind,
            source,
            destination,
            profile: None,
        };
        match db.start_run(&start) {
            Ok(id) => Some(RunRecorder { db, id }),
            Err(e) => {
                tracing::warn!("this run is not recorded in the state database: {e}");
                None
            }
        }
    }

    fn finish(self, result: &Result<haul_engine::Summary, EngineError>) {
        use haul_state::{Outcome, RunEnd};
        let end = match result {
            Ok(s) => RunEnd {
                bytes: s.bytes_sent,
                files: s.files_transferred,
                chunks: s.chunks_sent,
                outcome: if s.errors.is_empty() && s.files_failed == 0 {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                },
                error: s
                    .errors
                    .first()
                    .map(|p| format!("{}: {}", p.path, p.message)),
            },
            Err(e) => RunEnd {
                bytes: 0,
                files: 0,
                chunks: 0,
                outcome: match e {
                    _ if e.exit_code() == 3 => Outcome::Paused,
                    EngineError::Connection { .. } | EngineError::PeerAborted(_) => {
                        Outcome::Interrupted
                    }
                    _ => Outcome::Failed,
                },
                error: Some(e.to_string()),
            },
        };
        if let Err(e) = self.db.finish_run(self.id, &end) {
            tracing::warn!("cannot record the end of this run in the state database: {e}");
        }
    }
}

/// The engine job a transfer command runs (the CLI drives the same library API as the
/// workflow crates).
fn job_for(src: PathBuf, dest: &Destination, options: TransferOptions) -> Job {
    let (source, dest) = match dest {
        Destination::Local { dst, via_quic } => {
            let options = TransferOptions {
                via_quic: *via_quic,
                ..options
            };
            let job = Job::new(Endpoint::Local(src), Endpoint::Local(dst.clone()));
            return job.options(options);
        }
        Destination::Remote(target) => (
            Endpoint::Local(src),
            Endpoint::Remote(RemoteEnd {
                addr: target.addr,
                host_key: target.host_key.clone(),
                path: target.dest.clone(),
                trust: target.trust.clone(),
                token: target.token.clone(),
                congestion: target.congestion,
                snapshot: None,
            }),
        ),
        Destination::Pull { from, dst } => (
            Endpoint::Remote(RemoteEnd {
                addr: from.addr,
                host_key: from.host_key.clone(),
                path: from.path.clone(),
                trust: from.trust.clone(),
                token: from.token.clone(),
                congestion: from.congestion,
                snapshot: from.snapshot.clone(),
            }),
            Endpoint::Local(dst.clone()),
        ),
    };
    Job::new(source, dest).options(options)
}

async fn transfer_command(src: PathBuf, dest: Destination, args: TransferArgs) -> u8 {
    let mode = Mode::pick(args.json);
    let options = match options(&args, &src) {
        Ok(options) => options,
        Err(e) => {
            output::fatal(mode, &e, 1);
            return 1;
        }
    };
    if args.require_space && !args.dry_run {
        // Plan first: the bytes that must be written, against the target's free space.
        let plan = TransferOptions {
            dry_run: true,
            list_files: false,
            ..options.clone()
        };
        match job_for(src.clone(), &dest, plan).plan().await {
            Ok(plan) if plan.would_send_bytes > plan.target_free_bytes => {
                let e = anyhow!(
                    "--require-space: {} must be written but the target has only {} free; \
                     expand the storage (or free space) and run the same command again",
                    indicatif::HumanBytes(plan.would_send_bytes),
                    indicatif::HumanBytes(plan.target_free_bytes),
                );
                output::fatal(mode, &e, 3);
                return 3;
            }
            Ok(_) => {}
            Err(e) => {
                let code = e.exit_code();
                output::fatal(mode, &anyhow::Error::new(e), code);
                return code;
            }
        }
    }
    let record = (!args.dry_run).then(|| RunRecorder::start(args.state.as_deref(), &src, &dest));
    let job = job_for(src, &dest, options);
    let progress = job.progress();
    let ticker = output::Ticker::start(mode, progress.clone());
    let events = output::event_sink(mode, ticker.bar.clone());
    let result = job
        .run(move |event| match event {
            JobEvent::FileDone {
                path,
                bytes,
                blake3,
            } => events(haul_engine::Event::FileInstalled {
                path,
                bytes,
                blake3,
            }),
            JobEvent::Engine(event) => events(event),
            _ => {}
        })
        .await;
    ticker.stop();
    if let Some(Some(record)) = record {
        record.finish(&result);
    }
    match result {
        Ok(summary) => {
            output::summary(mode, &summary);
            if summary.errors.is_empty() && summary.files_failed == 0 {
                0
            } else {
                1
            }
        }
        Err(e) => {
            let code = e.exit_code();
            output::fatal_after(mode, &anyhow::Error::new(e), code, Some(&progress));
            code
        }
    }
}

/// A pull has no local source: `--files-from` lists are read relative to the destination.
fn dest_placeholder(dest: &Destination) -> PathBuf {
    match dest {
        Destination::Pull { dst, .. } => dst.clone(),
        _ => PathBuf::new(),
    }
}

pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<EngineError>()
        .map_or(1, EngineError::exit_code)
}

/// A parsed quic://HOST[:PORT]/PATH.
pub(crate) struct Url {
    pub(crate) addr: SocketAddr,
    /// HOST:PORT, the known-hosts key.
    pub(crate) host_key: String,
    /// PATH, relative to the token's grant (may be empty).
    pub(crate) path: Vec<u8>,
}

/// Parses and resolves quic://HOST[:PORT]/PATH (port 7470 when none is given).
pub(crate) async fn parse_url(url: &OsStr) -> anyhow::Result<Url> {
    let raw = url.as_bytes();
    let rest = raw.strip_prefix(b"quic://").ok_or_else(|| {
        anyhow!(
            "{:?} is not a haul URL; write quic://HOST[:PORT]/PATH",
            url.to_string_lossy()
        )
    })?;
    let (authority, path) = match rest.iter().position(|&b| b == b'/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let authority = std::str::from_utf8(authority).context("the host name is not valid UTF-8")?;
    if authority.is_empty() {
        bail!("the URL names no host; write quic://HOST[:PORT]/PATH");
    }
    let host_key = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:7470")
    } else {
        authority.to_string()
    };
    let addr: SocketAddr = tokio::net::lookup_host(&host_key)
        .await
        .with_context(|| format!("cannot resolve {host_key}"))?
        .next()
        .ok_or_else(|| anyhow!("{host_key} resolves to no address"))?;
    Ok(Url {
        addr,
        host_key,
        path: path.to_vec(),
    })
}

/// How to trust the host and authenticate to it.
pub(crate) fn trust_and_token(
    remote: &RemoteArgs,
) -> anyhow::Result<(Trust, Token, haul_net::Congestion)> {
    let trust = match &remote.fingerprint {
        Some(fp) => Trust::Pinned(fp.parse::<Fingerprint>()?),
        None => Trust::KnownHosts(
            remote
                .known_hosts
                .clone()
                .unwrap_or_else(|| haul_net::default_config_dir().join("known_hosts")),
        ),
    };
    let Some(token) = given_token(remote.token_file.clone())? else {
        bail!(
            "no token: pass --token-file FILE (the token file `haul serve` printed) or set \
             HAUL_TOKEN"
        );
    };
    Ok((trust, token, remote.congestion.into()))
}

/// Parses quic://HOST[:PORT]/PATH and works out how to trust and authenticate.
async fn push_target(src: &Path, dest: &OsStr, remote: RemoteArgs) -> anyhow::Result<PushTarget> {
    let url = parse_url(dest).await?;
    let mut dest_path = url.path;
    if dest_path.last() == Some(&b'/') {
        // Trailing slash: into PATH, under the source's own name.
        let name = src
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.as_bytes().to_vec()))
            .ok_or_else(|| anyhow!("{} has no name to copy under", src.display()))?;
        dest_path.extend_from_slice(&name);
    }
    let (trust, token, congestion) = trust_and_token(&remote)?;
    Ok(PushTarget {
        addr: url.addr,
        host_key: url.host_key,
        dest: dest_path,
        trust,
        token,
        congestion,
    })
}

/// Where a pull comes from.
async fn pull_source(
    src: &OsStr,
    snapshot: Option<String>,
    remote: &RemoteArgs,
) -> anyhow::Result<haul_engine::pull::PullSource> {
    let url = parse_url(src).await?;
    let (trust, token, congestion) = trust_and_token(remote)?;
    let mut path = url.path;
    while path.last() == Some(&b'/') {
        path.pop();
    }
    Ok(haul_engine::pull::PullSource {
        addr: url.addr,
        host_key: url.host_key,
        path,
        snapshot,
        trust,
        congestion,
        token,
    })
}

/// The options after a grant's token file: `,read`, `,write`, `,privileged`.
fn grant_options<'a>(
    grant: &str,
    spec: &'a str,
) -> anyhow::Result<(&'a str, haul_engine::Scope, bool)> {
    let mut parts = spec.split(',');
    let file = parts.next().unwrap_or_default();
    let (mut read, mut write, mut privileged) = (false, false, false);
    for option in parts {
        match option {
            "read" => read = true,
            "write" => write = true,
            "rw" | "read+write" => (read, write) = (true, true),
            "privileged" => privileged = true,
            other => {
                bail!("--grant {grant:?}: unknown option {other:?}; use read, write or privileged")
            }
        }
    }
    let scope = match (read, write) {
        (true, false) => haul_engine::Scope::Read,
        (false, true) => haul_engine::Scope::Write,
        _ => haul_engine::Scope::ReadWrite,
    };
    Ok((file, scope, privileged))
}

/// Who may write what on a receiver.
struct Access {
    token_file: Option<PathBuf>,
    grant: Vec<String>,
    privileged: bool,
}

async fn serve(
    mode: Mode,
    root: PathBuf,
    listen: SocketAddr,
    access: Access,
    config_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let Access {
        token_file,
        grant,
        privileged,
    } = access;
    let config_dir = config_dir.unwrap_or_else(haul_net::default_config_dir);
    if !root.is_dir() {
        bail!(
            "the root {} is not a directory; create it first",
            root.display()
        );
    }
    let (identity, created) = Identity::load_or_create(&config_dir)?;
    let mut grants = Vec::new();
    for g in &grant {
        let (subdir, file) = g.split_once('=').ok_or_else(|| {
            anyhow!("--grant {g:?}: write SUBDIR=TOKEN_FILE, e.g. --grant po1=/etc/haul/po1.token")
        })?;
        let (file, scope, privileged) = grant_options(g, file)?;
        let subdir = haul_store::RelPath::parse(subdir.as_bytes())
            .map_err(|e| anyhow!("--grant {g:?}: the sub-directory is refused: {e}"))?;
        if subdir.is_root() {
            bail!(
                "--grant {g:?}: name a sub-directory of the root (use --token-file for the root)"
            );
        }
        grants.push(Grant {
            token: Token::load(Path::new(file))?,
            subdir,
            scope,
            privileged,
        });
    }
    let whole_root = match given_token(token_file)? {
        Some(token) => Some(token),
        None if !grants.is_empty() => None,
        None => {
            let path = config_dir.join("token");
            let (token, generated) = Token::load_or_generate(&path)?;
            let verb = if generated {
                "generated a token and stored it in"
            } else {
                "using the token in"
            };
            eprintln!(
                "haul serve: {verb} {} (mode 0600); give it to clients with --token-file or \
                 HAUL_TOKEN",
                path.display()
            );
            Some(token)
        }
    };
    if let Some(token) = whole_root {
        grants.push(Grant {
            token,
            subdir: haul_store::RelPath::root(),
            scope: haul_engine::Scope::ReadWrite,
            privileged,
        });
    }
    // What each token may do, so the operator sees what a client can do to this host.
    let am_root = rustix::process::geteuid().is_root();
    for g in &grants {
        let place = if g.subdir.is_root() {
            root.display().to_string()
        } else {
            root.join(OsStr::from_bytes(&g.subdir.to_bytes()))
                .display()
                .to_string()
        };
        let what = match (g.privileged, am_root) {
            (true, true) => "privileged: owners, setuid/setgid, devices, security.* attributes",
            (true, false) => {
                "privileged, but this receiver is not root: owners, setuid/setgid and devices \
                 will not be applied"
            }
            (false, _) => {
                "unprivileged: owners, setuid/setgid, devices and security.* attributes are not \
                 applied"
            }
        };
        eprintln!("haul serve: grant {place}: {}; {what}", g.scope.name());
    }
    if created {
        eprintln!(
            "haul serve: created a new certificate in {}",
            config_dir.display()
        );
    }
    let fingerprint = identity.fingerprint;
    let events = output::event_sink(mode, None);
    let options = ServeOptions {
        root: root.clone(),
        listen,
        grants,
        identity,
    };
    jobs::serve(
        options,
        |addr| {
            if mode == Mode::Json {
                output::json_line(&serde_json::json!({
                    "event": "listening",
                    "address": addr.to_string(),
                    "fingerprint": fingerprint.to_string(),
                    "root": root.display().to_string(),
                }));
            } else {
                println!("haul serve: listening on {addr} fingerprint {fingerprint}");
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
        },
        events,
    )
    .await?;
    Ok(())
}

fn hash(files: &[PathBuf]) -> u8 {
    let mut code = 0;
    for file in files {
        match haul_manifest::hash_file(file) {
            Ok(hash) => println!("{}  {}", haul_manifest::to_hex(&hash), file.display()),
            Err(e) => {
                eprintln!("haul: cannot hash {}: {e}", file.display());
                code = 1;
            }
        }
    }
    code
}
