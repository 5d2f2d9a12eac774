//! `haul remote ...` and `haul snapshot ...`: remote operations and snapshots, printed for a
//! person (or as JSON with `--json`).

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, anyhow};
use haul_engine::remote::{LeaseGuard, Remote, RemoteTarget, SnapshotInfo};
use serde::Serialize;

use crate::args::{RemoteArgs, RemoteOp, SnapshotOp};
use crate::output::{self, Mode};
use crate::{parse_url, trust_and_token};

/// Runs one `haul remote` operation; returns the exit code.
pub(crate) async fn remote(op: RemoteOp, json: bool) -> u8 {
    let mode = Mode::pick(json);
    match run_remote(op, json).await {
        Ok(code) => code,
        Err(e) => {
            let code = crate::exit_code(&e);
            output::fatal(mode, &e, code);
            code
        }
    }
}

/// Runs one `haul snapshot` operation; returns the exit code.
pub(crate) async fn snapshot(op: SnapshotOp, json: bool) -> u8 {
    let mode = Mode::pick(json);
    match run_snapshot(op, json).await {
        Ok(code) => code,
        Err(e) => {
            let code = crate::exit_code(&e);
            output::fatal(mode, &e, code);
            code
        }
    }
}

/// Connects to the host `url` names; returns the handle and the path in the URL.
async fn connect(
    url: &OsStr,
    remote: &RemoteArgs,
    holder: Option<String>,
) -> anyhow::Result<(Remote, String, RemoteTarget)> {
    let parsed = parse_url(url).await?;
    let (trust, token, _) = trust_and_token(remote)?;
    let target = RemoteTarget {
        addr: parsed.addr,
        host_key: parsed.host_key,
        trust,
        token,
        holder,
    };
    let path = String::from_utf8(parsed.path).context("the path is not valid UTF-8")?;
    let handle = Remote::connect(&target).await?;
    Ok((handle, path, target))
}

fn print_json<T: Serialize>(value: &T) {
    output::json_line(&serde_json::to_value(value).unwrap_or_default());
}

async fn run_remote(op: RemoteOp, json: bool) -> anyhow::Result<u8> {
    let mut code = 0;
    match op {
        RemoteOp::Df { url, remote } => {
            let (mut r, _, _) = connect(&url, &remote, None).await?;
            // Closed whatever happens: a connection left open holds a slot on the host
            // until it times out.
            let result: anyhow::Result<()> = async {
                let df = r.df().await?;
                if json {
                    print_json(&df);
                } else {
                    let used = df.total_bytes.saturating_sub(df.free_bytes);
                    println!(
                        "{} free of {} ({} used); {} of {} inodes free",
                        indicatif::HumanBytes(df.free_bytes),
                        indicatif::HumanBytes(df.total_bytes),
                        indicatif::HumanBytes(used),
                        df.free_inodes,
                        df.total_inodes
                    );
                }
                Ok(())
            }
            .await;
            r.close().await;
            result?;
        }
        RemoteOp::Ls { url, remote } => {
            let (mut r, path, _) = connect(&url, &remote, None).await?;
            // Closed whatever happens: a connection left open holds a slot on the host
            // until it times out.
            let result: anyhow::Result<()> = async {
                let items = r.ls(&path).await?;
                if json {
                    print_json(&items);
                } else {
                    for item in &items {
                        let suffix = if item.kind == "dir" { "/" } else { "" };
                        println!("{:>12} {:<7} {}{suffix}", item.size, item.kind, item.name);
                    }
                }
                Ok(())
            }
            .await;
            r.close().await;
            result?;
        }
        RemoteOp::Stat { url, remote } => {
            let (mut r, path, _) = connect(&url, &remote, None).await?;
            // Closed whatever happens: a connection left open holds a slot on the host
            // until it times out.
            let result: anyhow::Result<()> = async {
                let info = r.stat(&path).await?;
                if json {
                    print_json(&info);
                } else {
                    match &info {
                        None => println!("nothing at /{path}"),
                        Some(i) => {
                            let empty = match i.empty {
                                Some(true) => ", empty",
                                Some(false) => ", not empty",
                                None => "",
                            };
                            println!(
                                "{} {} bytes, mode {:o}, owner {}:{}, {} links, mtime {}{empty}",
                                i.kind,
                                i.size,
                                i.mode & 0o7777,
                                i.uid,
                                i.gid,
                                i.nlink,
                                i.mtime_sec
                            );
                        }
                    }
                }
                if info.is_none() {
                    code = 1;
                }
                Ok(())
            }
            .await;
            r.close().await;
            result?;
        }
        RemoteOp::Du { url, remote } => {
            let (mut r, path, _) = connect(&url, &remote, None).await?;
            // Closed whatever happens: a connection left open holds a slot on the host
            // until it times out.
            let result: anyhow::Result<()> = async {
                let du = r.du(&path).await?;
                if json {
                    print_json(&du);
                } else {
                    println!(
                        "{} in {} files ({} allocated), {} directories, {} symlinks, {} others",
                        indicatif::HumanBytes(du.bytes),
                        du.files,
                        indicatif::HumanBytes(du.allocated_bytes),
                        du.dirs,
                        du.symlinks,
                        du.others
                    );
                }
                Ok(())
            }
            .await;
            r.close().await;
            result?;
        }
        RemoteOp::Manifest { url, remote } => {
            let (mut r, path, _) = connect(&url, &remote, None).await?;
            // Closed whatever happens: a connection left open holds a slot on the host
            // until it times out.
            let result: anyhow::Result<()> = async {
                let entries = r.manifest(&path).await?;
                if json {
                    print_json(&entries);
                } else {
                    let mut out = std::io::stdout().lock();
                    // A manifest of one file names it by nothing: print its own name.
                    let own = path
                        .trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .unwrap_or_default();
                    for e in &entries {
                        let e = &haul_engine::remote::ManifestEntry {
                            path: if e.path.is_empty() {
                                own.to_string()
                            } else {
                                e.path.clone()
                            },
                            ..e.clone()
                        };
                        if let Some(hash) = &e.blake3 {
                            // As b3sum does: a name with a backslash or newline is escaped and
                            // its line starts with a backslash.
                            if e.path.contains(['\\', '\n']) {
                                let name = e.path.replace('\\', "\\\\").replace('\n', "\\n");
                                let _ = writeln!(out, "\\{hash}  {name}");
                            } else {
                                let _ = writeln!(out, "{hash}  {}", e.path);
                            }
                        }
                    }
                }
                Ok(())
            }
            .await;
            r.close().await;
            result?;
        }
        RemoteOp::Rm { url, remote } => {
            let (mut r, path, _) = connect(&url, &remote, None).await?;
            // Closed whatever happens: a connection left open holds a slot on the host
            // until it times out.
            let result: anyhow::Result<()> = async {
                let removed = r.rm(&path).await?;
                if json {
                    print_json(&serde_json::json!({ "removed": removed }));
                } else {
                    println!("removed /{path} ({removed} entries)");
                }
                Ok(())
            }
            .await;
            r.close().await;
            result?;
        }
        RemoteOp::Mv { url, to, remote } => {
            let (mut r, path, _) = connect(&url, &remote, None).await?;
            // Closed whatever happens: a connection left open holds a slot on the host
            // until it times out.
            let result: anyhow::Result<()> = async {
                r.mv(&path, &to).await?;
                if json {
                    print_json(&serde_json::json!({ "from": path, "to": to }));
                } else {
                    println!("renamed /{path} to /{}", to.trim_start_matches('/'));
                }
                Ok(())
            }
            .await;
            r.close().await;
            result?;
        }
        RemoteOp::Cat { url, remote } => {
            let (mut r, path, _) = connect(&url, &remote, None).await?;
            // Closed whatever happens: a connection left open holds a slot on the host
            // until it times out.
            let result: anyhow::Result<()> = async {
                let bytes = r.cat(&path).await?;
                std::io::stdout()
                    .write_all(&bytes)
                    .context("cannot write to standard output")?;
                Ok(())
            }
            .await;
            r.close().await;
            result?;
        }
        RemoteOp::Put { url, file, remote } => {
            let bytes = read_input(&file)?;
            let (mut r, path, _) = connect(&url, &remote, None).await?;
            // Closed whatever happens: a connection left open holds a slot on the host
            // until it times out.
            let result: anyhow::Result<()> = async {
                r.put(&path, &bytes).await?;
                if !json {
                    println!("wrote /{path} ({} bytes)", bytes.len());
                }
                Ok(())
            }
            .await;
            r.close().await;
            result?;
        }
        RemoteOp::Lease {
            url,
            holder,
            purpose,
            ttl,
            remote,
        } => {
            let (r, path, target) = connect(&url, &remote, None).await?;
            r.close().await;
            let guard = LeaseGuard::hold(&target, &path, &holder, &purpose, ttl).await?;
            if json {
                print_json(&guard.info);
            } else {
                if let Some(old) = &guard.info.took_over {
                    println!("took over the expired lease of {old}");
                }
                println!(
                    "holding the lease on /{path} for {holder} ({purpose}); renewed every {} s \
                     until stopped",
                    (ttl / 3).as_secs_f64()
                );
            }
            let _ = std::io::stdout().flush();
            wait_for_stop().await;
            guard.release().await?;
        }
        RemoteOp::Leases { url, remote } => {
            let (mut r, _, _) = connect(&url, &remote, None).await?;
            // Closed whatever happens: a connection left open holds a slot on the host
            // until it times out.
            let result: anyhow::Result<()> = async {
                let leases = r.leases().await?;
                if json {
                    print_json(&leases);
                } else {
                    for l in &leases {
                        println!(
                            "/{}  held by {} ({}), expires at {} ms",
                            l.path, l.holder, l.purpose, l.expires_ms
                        );
                    }
                }
                Ok(())
            }
            .await;
            r.close().await;
            result?;
        }
    }
    Ok(code)
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_stop() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

fn read_input(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .context("cannot read standard input")?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

fn is_url(target: &OsStr) -> bool {
    target.as_bytes().starts_with(b"quic://")
}

/// A local receiver root.
fn local_root(target: &OsStr) -> anyhow::Result<haul_store::Root> {
    let path = Path::new(target);
    haul_store::Root::open(path)
        .with_context(|| format!("cannot open {} as a receiver root", path.display()))
}

fn print_snapshot(s: &SnapshotInfo) {
    let state = if s.complete { "" } else { " (incomplete)" };
    println!(
        "{}  {}  /{}  {} files, {}, {}{state}  {}",
        s.id,
        s.created,
        s.path,
        s.files,
        indicatif::HumanBytes(s.bytes),
        s.method,
        s.label
    );
}

fn local_info(s: &haul_store::SnapshotInfo) -> SnapshotInfo {
    SnapshotInfo {
        id: s.id.clone(),
        created: s.created.max(0) as u64,
        label: s.label.clone(),
        path: s.subtree.display(),
        method: s.method.map_or("unknown", |m| m.as_str()).into(),
        files: s.files,
        bytes: s.bytes,
        complete: s.complete,
    }
}

async fn run_snapshot(op: SnapshotOp, json: bool) -> anyhow::Result<u8> {
    match op {
        SnapshotOp::Create {
            target,
            path,
            label,
            remote,
        } => {
            let info = if is_url(&target) {
                let (mut r, url_path, _) = connect(&target, &remote, None).await?;
                let path = if path.is_empty() { url_path } else { path };
                let info = r.snapshot_create(&path, &label).await;
                r.close().await;
                info?
            } else {
                let root = local_root(&target)?;
                let rel = haul_store::RelPath::parse(path.trim_start_matches('/').as_bytes())
                    .map_err(|e| anyhow!("--path {path:?}: {e}"))?;
                let made = tokio::task::spawn_blocking(move || root.create_snapshot(&rel, &label))
                    .await
                    .context("the snapshot task failed")??;
                local_info(&made)
            };
            if json {
                print_json(&info);
            } else {
                print_snapshot(&info);
            }
        }
        SnapshotOp::List { target, remote } => {
            let list = if is_url(&target) {
                let (mut r, _, _) = connect(&target, &remote, None).await?;
                let list = r.snapshot_list().await;
                r.close().await;
                list?
            } else {
                local_root(&target)?
                    .list_snapshots()?
                    .iter()
                    .map(local_info)
                    .collect()
            };
            if json {
                print_json(&list);
            } else {
                list.iter().for_each(print_snapshot);
            }
        }
        SnapshotOp::Delete { target, id, remote } => {
            if is_url(&target) {
                let (mut r, _, _) = connect(&target, &remote, None).await?;
                let deleted = r.snapshot_delete(&id).await;
                r.close().await;
                deleted?;
            } else {
                local_root(&target)?.delete_snapshot(&id)?;
            }
            if json {
                print_json(&serde_json::json!({ "deleted": id }));
            } else {
                println!("deleted snapshot {id}");
            }
        }
    }
    Ok(0)
}
