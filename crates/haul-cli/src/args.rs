//! Command-line arguments.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// haul copies large directory trees fast, verified end to end, over QUIC.
///
/// Every chunk is hashed with BLAKE3 and verified by the receiver before it is written, and a
/// file appears under its final name only once its whole hash matches (the same hash `b3sum`
/// prints). Exit status: 0 done, 1 error (some files may have been copied; the errors name
/// them), 3 the target ran out of space (expand it and run the same command again).
#[derive(Debug, Parser)]
#[command(name = "haul", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Copy a file or tree to a local destination, through an embedded receiver in this
    /// process (the same protocol, checks and verification as a remote push, without the
    /// network; no server to start).
    ///
    /// A directory SRC makes DST a copy of it (created if missing, merged into if present).
    /// A file SRC is copied to DST, or into DST when DST is an existing directory.
    Copy {
        /// The file or directory to copy.
        src: PathBuf,
        /// Where the copy goes.
        dst: PathBuf,
        /// Accepted for compatibility: a copy keeps setuid and setgid bits whenever it runs as
        /// root, like `cp -a`.
        #[arg(long, hide = true)]
        preserve_special_bits: bool,
        /// Run the embedded receiver over loopback QUIC with TLS, exactly as a push to a
        /// remote `haul serve` would travel (slower; for testing the network path).
        #[arg(long)]
        via_quic: bool,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Send a file or tree to a running `haul serve`.
    ///
    /// DEST is quic://HOST[:PORT]/PATH; PATH is relative to the receiver's root. With a
    /// trailing slash, SRC goes into PATH under its own name; without one, PATH becomes the
    /// copy. The server's certificate must be pinned with --fingerprint, or is checked against
    /// the known-hosts file (trusted and recorded on first use, refused if it changes).
    Push {
        /// The file or directory to send.
        src: PathBuf,
        /// quic://HOST[:PORT]/PATH
        dest: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Serve ROOT: accept pushes into it, pulls from it and remote operations on it.
    ///
    /// Prints one line with the listening address and the certificate fingerprint clients pin.
    /// The certificate is created once and kept in the config directory. Clients must present
    /// a token: --token-file FILE, or HAUL_TOKEN, or else one is generated and stored (mode
    /// 0600) in the config directory, and its path is printed.
    Serve {
        /// Directory everything received is written under (nothing is ever written outside it).
        #[arg(long)]
        root: PathBuf,
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7470")]
        listen: SocketAddr,
        /// File holding the token clients must present.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// A token confined to a part of the root: SUBDIR=TOKEN_FILE[,read|,write][,privileged].
        /// A client presenting that token reaches only ROOT/SUBDIR (its paths are relative to
        /// it), so one receiver serves several migrations without one reaching into another's
        /// tree. ",read" allows only pulls, reading and looking; ",write" only pushes, changes
        /// and looking (never reading file data); neither means both. ",privileged" lets that
        /// token's transfers set owners, setuid/setgid bits, device nodes and
        /// security.*/trusted.* attributes (see --privileged). Repeatable. With --grant and no
        /// --token-file or HAUL_TOKEN, no token covers the whole root.
        #[arg(long, value_name = "SUBDIR=TOKEN_FILE[,read|,write][,privileged]")]
        grant: Vec<String>,
        /// Where the certificate and generated token live [default: $HAUL_CONFIG_DIR, or
        /// $XDG_CONFIG_HOME/haul, or ~/.config/haul].
        #[arg(long)]
        config_dir: Option<PathBuf>,
        /// Let the whole-root token (--token-file, HAUL_TOKEN or the generated one) set owners
        /// and groups, setuid/setgid bits, device nodes and security.* (file capabilities) and
        /// trusted.* attributes, as `cp -a` does as root. Off by default: a receiver often
        /// runs as root, and a client must not be able to plant a setuid-root program, a device
        /// or a capability on this host. Without it those are not applied and each summary
        /// counts them. Needs the receiver to run as root.
        #[arg(long, alias = "preserve-special-bits")]
        privileged: bool,
        /// Print events as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show what a copy or push would do (same as --dry-run): files and bytes that would be
    /// sent, reused and skipped, and an estimated duration.
    ///
    /// DST is a local path (as for `copy`) or quic://HOST[:PORT]/PATH (as for `push`).
    Plan {
        /// The file or directory to copy.
        src: PathBuf,
        /// A local path or quic://HOST[:PORT]/PATH.
        dst: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Receive a file or tree from a running `haul serve` (the serving host sends).
    ///
    /// SRC is quic://HOST[:PORT]/PATH, PATH relative to the token's grant on the host (the
    /// token needs read scope). Everything push guarantees holds: every chunk verified, files
    /// installed only once whole, resumable after a kill, incremental re-runs, --delete,
    /// filters. A directory PATH makes DEST a copy of it (created if missing, merged into if
    /// present); a file lands at DEST, or in DEST when it is a directory.
    Pull {
        /// quic://HOST[:PORT]/PATH
        src: OsString,
        /// Where the copy goes (a local path).
        dest: PathBuf,
        /// Restore: read PATH from this snapshot of the host (`haul snapshot list` shows the
        /// ids) instead of its live tree.
        #[arg(long, value_name = "ID")]
        snapshot: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Look at and manage a serving host's tree: free space, listings, sizes, manifests,
    /// removal, renames, small control files and leases.
    ///
    /// Every path is relative to the token's grant and confined to it exactly like a push
    /// (no `..`, no absolute paths, never through a symlink, never `.haul`). Looking needs any
    /// token; reading file data (cat, manifest) needs read scope; changes need write scope
    /// and are logged by the host.
    Remote {
        /// Print the result as JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        op: RemoteOp,
    },
    /// Make, list and delete snapshots: immutable point-in-time copies of a destination tree
    /// (reflinks where the file system has them, XFS and Btrfs; hard links otherwise).
    ///
    /// TARGET is a local receiver root (optionally ROOT with --path SUB) or
    /// quic://HOST[:PORT]/PATH on a serving host. Snapshots live in the root's .haul
    /// directory: --delete, adoption and listings never see them, and `haul pull --snapshot
    /// ID` restores one.
    Snapshot {
        /// Print the result as JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        op: SnapshotOp,
    },
    /// Protection relationships (Protection Manager): datasets with policies own
    /// relationships from a source to a destination host; updates, backups, expiry,
    /// restores, and migrating relationships to another management server without a
    /// re-baseline (discover, preflight, relinquish, import).
    Protect(crate::protect_cmd::ProtectArgs),
    /// Migrate a GroupWise post office from its Reload backups (pre-migration, final full
    /// migration, verify, cleanup, estimate; profiles and a migration log in the state
    /// database).
    Groupwise(crate::groupwise_cmd::GroupwiseArgs),
    /// Migrate an appliance (App Layering ELM's "Migrate Appliance"): preconditions, Phase
    /// One (layers), confirmation, Phase Two (database), as Copy or Move, with tasks that
    /// survive restarts, pause when the target is full and can be cancelled or reverted.
    Elm {
        #[command(subcommand)]
        command: crate::elm_cmd::ElmCommand,
    },
    /// Print BLAKE3 hashes of files, in the format of `b3sum` (haul's file hash is the same).
    Hash {
        /// Files to hash.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `haul remote` operations.
#[derive(Debug, Subcommand)]
pub(crate) enum RemoteOp {
    /// Free and total space and inodes of the host's file system.
    Df {
        /// quic://HOST[:PORT][/PATH]
        url: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List a directory.
    Ls {
        /// quic://HOST[:PORT]/PATH
        url: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// What is at a path (exit 1 when nothing is); for a directory, whether it is empty.
    Stat {
        /// quic://HOST[:PORT]/PATH
        url: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Size of a tree: bytes, allocated bytes, files, directories.
    Du {
        /// quic://HOST[:PORT]/PATH
        url: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Every entry of a tree with its size and BLAKE3 hash, in `b3sum` format (read scope).
    Manifest {
        /// quic://HOST[:PORT]/PATH
        url: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Remove a file, link or whole tree.
    Rm {
        /// quic://HOST[:PORT]/PATH
        url: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Rename within the grant (the target must not exist).
    Mv {
        /// quic://HOST[:PORT]/PATH
        url: OsString,
        /// The new path, relative to the grant.
        to: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Print a small control file (read scope).
    Cat {
        /// quic://HOST[:PORT]/PATH
        url: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Replace a small control file atomically with FILE's contents (- for stdin).
    Put {
        /// quic://HOST[:PORT]/PATH
        url: OsString,
        /// The local file to send, or - for standard input.
        file: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Hold a lease on a tree until stopped (Ctrl-C, SIGTERM): pushes, removals and renames
    /// into it from anyone but HOLDER are refused, naming HOLDER and PURPOSE. Renewed while
    /// this runs; if it is killed, the lease expires after --ttl and can be taken over.
    Lease {
        /// quic://HOST[:PORT]/PATH
        url: OsString,
        /// Who holds it (pass the same to `push --lease-holder`).
        #[arg(long)]
        holder: String,
        /// What for, shown to whoever is refused.
        #[arg(long)]
        purpose: String,
        /// How long the lease outlives this process if it dies (e.g. 30s, 5m).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        ttl: std::time::Duration,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List the leases under the grant.
    Leases {
        /// quic://HOST[:PORT]
        url: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// `haul snapshot` operations.
#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotOp {
    /// Make a snapshot of TARGET; prints its id.
    Create {
        /// A local receiver root, or quic://HOST[:PORT]/PATH.
        target: OsString,
        /// With a local root: the tree under it to snapshot.
        #[arg(long, default_value = "")]
        path: String,
        /// Free-form label recorded with it (who made it, and why).
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List snapshots, oldest first.
    List {
        /// A local receiver root, or quic://HOST[:PORT].
        target: OsString,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Delete a snapshot.
    Delete {
        /// A local receiver root, or quic://HOST[:PORT].
        target: OsString,
        /// The snapshot's id.
        id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// A duration like 500ms, 30s, 5m or 2h.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s or 5m"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("unknown unit in {s:?}; use ms, s, m or h")),
    };
    if ms == 0 {
        return Err(format!("{s:?} is no time at all; give a duration above 0"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// How to reach and trust a receiver (push, and plan with a quic:// destination).
#[derive(Debug, Args)]
pub(crate) struct RemoteArgs {
    /// The server's certificate fingerprint, as `haul serve` prints it (sha256:...).
    #[arg(long)]
    pub(crate) fingerprint: Option<String>,
    /// Known-hosts file used when no --fingerprint is given [default: CONFIG_DIR/known_hosts].
    #[arg(long)]
    pub(crate) known_hosts: Option<PathBuf>,
    /// File holding the token the receiver expects (or set HAUL_TOKEN).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Congestion controller for the data this side sends. tolerant: CUBIC that backs off
    /// for loss bursts (a full queue) but not for scattered random loss, so a long path with
    /// a little loss (WAN, VPN) stays full; cubic: backs off at every loss, like TCP, and
    /// shares a congested link most politely; bbr: quinn's experimental BBR.
    #[arg(long, value_enum, default_value_t = CongestionArg::Tolerant)]
    pub(crate) congestion: CongestionArg,
}

/// `--congestion` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CongestionArg {
    /// Loss-tolerant CUBIC (default).
    Tolerant,
    /// BBR.
    Bbr,
    /// CUBIC.
    Cubic,
}

impl From<CongestionArg> for haul_net::Congestion {
    fn from(arg: CongestionArg) -> Self {
        match arg {
            CongestionArg::Tolerant => haul_net::Congestion::Tolerant,
            CongestionArg::Bbr => haul_net::Congestion::Bbr,
            CongestionArg::Cubic => haul_net::Congestion::Cubic,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct TransferArgs {
    /// Print JSON lines (events, then a summary object) instead of progress bars.
    #[arg(long)]
    pub(crate) json: bool,
    /// Where the state database lives (the record of every run, from which estimates are
    /// drawn) [default: $HAUL_STATE_DIR, or $XDG_STATE_HOME/haul, or ~/.local/state/haul].
    #[arg(long, value_name = "DIR", env = "HAUL_STATE_DIR")]
    pub(crate) state: Option<PathBuf>,
    /// The job this transfer works for, as named when a lease was taken on the destination
    /// (`haul remote lease --holder`): only the holder may write into a leased tree.
    #[arg(long, value_name = "HOLDER")]
    pub(crate) lease_holder: Option<String>,
    /// Report every file as it is installed, with the BLAKE3 hash the receiver verified (the
    /// hash `b3sum` prints for the copy).
    #[arg(long)]
    pub(crate) list: bool,
    /// Chunk size, a power of two from 64K to 64M (e.g. 1M, 4M, 8MiB).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub(crate) chunk_size: u32,
    /// Parallel QUIC data streams.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) streams: u16,
    /// Compare files by BLAKE3 hash even when size and mtime match. Use it to adopt a copy
    /// made by another tool (cp -a, rsync, a restore): only differing chunks travel.
    #[arg(long)]
    pub(crate) checksum: bool,
    /// Report what would be sent, reused and skipped, and how long it would take from this
    /// receiver's throughput history; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Directories (relative to the destination) that must be fresh copies: each one that
    /// already exists is renamed to the next free DIR.1, DIR.2, ... first. Chunks the old copy
    /// holds are reused locally instead of crossing the network.
    #[arg(long, value_name = "DIR[,DIR...]", value_delimiter = ',')]
    pub(crate) rename_aside: Vec<PathBuf>,
    /// Plan first and refuse to start (exit 3) if the target lacks the space for what must be
    /// written. Without it, haul warns and pauses with exit 3 when the disk fills.
    #[arg(long)]
    pub(crate) require_space: bool,
    /// Compress chunk data with zstd on the wire. auto: compress a chunk when a quick sample
    /// of it shrinks, so random or already-compressed data costs almost nothing; on: try every
    /// chunk; off: never. A chunk travels compressed only if that saves 10% or more. The
    /// BLAKE3 chunk hash always covers the uncompressed data, so verification is unchanged.
    #[arg(long, value_enum, default_value_t = CompressMode::Auto)]
    pub(crate) compress: CompressMode,
    /// Keep owner and group numbers as they are instead of mapping them through user and
    /// group names (by default a name the target knows gets its number there; an unknown
    /// name keeps the number).
    #[arg(long)]
    pub(crate) numeric_ids: bool,
    /// Do not send owners and groups (the copy belongs to whoever the receiver runs as).
    #[arg(long)]
    pub(crate) no_owners: bool,
    /// Do not copy extended attributes and POSIX ACLs.
    #[arg(long)]
    pub(crate) no_xattrs: bool,
    /// Copy each name of a hard-linked file as a file of its own (by default a link group is
    /// sent once and linked on the target).
    #[arg(long)]
    pub(crate) no_hard_links: bool,
    /// Make the destination a mirror: after the copy is installed, remove what the destination
    /// holds that the source does not. Never removes the receiver's .haul directory,
    /// renamed-aside copies, or (without --delete-excluded) what --exclude protects. Skipped,
    /// with an error, when any part of the source could not be read.
    #[arg(long)]
    pub(crate) delete: bool,
    /// With --delete, also remove what the filters exclude.
    #[arg(long, requires = "delete")]
    pub(crate) delete_excluded: bool,
    /// With --delete, refuse to remove more than N entries (counting what removed directories
    /// hold): over it, nothing is removed and the run fails.
    #[arg(long, value_name = "N", requires = "delete")]
    pub(crate) max_delete: Option<u64>,
    /// Leave out what matches PATTERN (repeatable; rules apply in the order given, the first
    /// that matches decides). A PATTERN with no '/' matches a name at any depth; one that
    /// starts with '/' or has a '/' inside is anchored at the source root; a trailing '/'
    /// matches directories only; '*' and '?' stay within one name, '**' crosses directories.
    /// An excluded directory is not descended into.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) exclude: Vec<String>,
    /// Keep what matches PATTERN even if a later --exclude would leave it out (same pattern
    /// rules as --exclude).
    #[arg(long, value_name = "PATTERN")]
    pub(crate) include: Vec<String>,
    /// Read exclude patterns from FILE, one per line ('#' comments; "+ PATTERN" includes,
    /// "- PATTERN" excludes).
    #[arg(long, value_name = "FILE")]
    pub(crate) exclude_from: Vec<PathBuf>,
    /// Copy only the paths listed in FILE (relative to the source, one per line), with their
    /// parent directories and, for a listed directory, everything in it.
    #[arg(long, value_name = "FILE")]
    pub(crate) files_from: Option<PathBuf>,
    /// Do not cross into other file systems mounted below the source (their mount points are
    /// copied as empty directories).
    #[arg(long, short = 'x')]
    pub(crate) one_file_system: bool,
    /// The --include and --exclude rules in command-line order (filled in after parsing).
    #[arg(skip)]
    pub(crate) rules: Vec<(bool, String)>,
    /// Cap the rate chunk data is sent at, over all streams, to leave room on a shared link:
    /// bytes per second with K, M or G (1024-based: 50M is 50 MiB/s), or bits per second as
    /// kbit, mbit or gbit (400mbit). A bare number is KiB/s, as for rsync --bwlimit.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub(crate) bwlimit: Option<u64>,
}

/// Fills each transfer command's `rules` with its --include and --exclude patterns in the
/// order they were given: the first rule that matches decides, so the order matters, and clap
/// keeps each option's values apart.
pub(crate) fn order_rules(cli: &mut Cli, sub: &clap::ArgMatches) {
    let transfer = match &mut cli.command {
        Command::Copy { transfer, .. }
        | Command::Push { transfer, .. }
        | Command::Pull { transfer, .. }
        | Command::Plan { transfer, .. } => transfer,
        _ => return,
    };
    let mut rules: Vec<(usize, bool, String)> = Vec::new();
    for (id, include) in [("include", true), ("exclude", false)] {
        if let (Some(indices), Some(values)) = (sub.indices_of(id), sub.get_many::<String>(id)) {
            rules.extend(indices.zip(values).map(|(i, v)| (i, include, v.clone())));
        }
    }
    rules.sort_by_key(|r| r.0);
    transfer.rules = rules.into_iter().map(|(_, inc, v)| (inc, v)).collect();
}

/// The values of `--compress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum CompressMode {
    /// Compress chunks whose sample shrinks.
    Auto,
    /// Try every chunk.
    On,
    /// Never compress.
    Off,
}

/// A rate for --bwlimit, in bytes per second.
pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.trim_end_matches("/s");
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate like 50M or 400mbit"))?;
    let bytes_per_s = match unit {
        "" => num * 1024.0,
        "b" => num,
        "k" | "kb" | "kib" => num * 1024.0,
        "m" | "mb" | "mib" => num * 1048576.0,
        "g" | "gb" | "gib" => num * 1073741824.0,
        "kbit" => num * 1e3 / 8.0,
        "mbit" => num * 1e6 / 8.0,
        "gbit" => num * 1e9 / 8.0,
        _ => {
            return Err(format!(
                "unknown unit in {s:?}; use K, M or G (bytes/s) or kbit, mbit or gbit"
            ));
        }
    };
    if !(bytes_per_s >= 1024.0 && bytes_per_s.is_finite()) {
        return Err(format!("{s} is below the smallest limit, 1 KiB/s"));
    }
    Ok(bytes_per_s as u64)
}

fn parse_size(s: &str) -> Result<u32, String> {
    let lower = s.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let num: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4M"))?;
    let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("unknown unit in {s:?}; use K, M or G")),
    };
    let bytes = num.saturating_mul(mult);
    if !bytes.is_power_of_two() || !(64 << 10..=64 << 20).contains(&bytes) {
        return Err(format!("{s} is not a power of two between 64K and 64M"));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_bytes_and_bits() {
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("50MiB/s"), Ok(50 << 20));
        assert_eq!(parse_rate("400mbit"), Ok(50_000_000));
        assert_eq!(parse_rate("1gbit"), Ok(125_000_000));
        assert_eq!(
            parse_rate("2048"),
            Ok(2 << 20),
            "a bare number is KiB/s, as in rsync"
        );
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10furlongs").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert!(parse_size("3M").is_err());
        assert!(parse_size("1G").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
