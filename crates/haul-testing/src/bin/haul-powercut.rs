//! `haul-powercut`: runs one command on a power-cut file system and cuts the power, to
//! reproduce by hand what `tests/powercut.rs` finds.
//!
//! ```sh
//! haul-powercut --backing /tmp/b --mount /tmp/m --after-durable 6 -- \
//!     haul copy --json --list /data/src /tmp/m/dst
//! ```
//!
//! Mounts the power-cut file system (see `haul_testing::powercut`), runs the command traced
//! (so its `syncfs` counts), waits until the trigger holds an operation back or the command
//! ends, then cuts the power (killing the command) and prints the report. The command's
//! stdout and stderr are printed after it. Needs root and `/dev/fuse`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use haul_testing::powercut::{Mode, PowerCut, Trigger};

/// Run a command on a power-cut file system, then cut the power.
#[derive(Parser, Debug)]
#[command(name = "haul-powercut")]
struct Args {
    /// The directory to serve (rolled back to its durable state at the cut).
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount it (an empty directory).
    #[arg(long)]
    mount: PathBuf,
    /// strict (only synced names and data survive), zero-fill (synced names; unsynced bytes
    /// read back as zeros, sizes kept) or journaled (names and metadata kept, unsynced bytes
    /// zeros).
    #[arg(long, default_value = "strict")]
    mode: String,
    /// Stop answering after this many durability operations (fsync, fdatasync, syncfs).
    #[arg(long, conflicts_with = "after_changes")]
    after_durable: Option<u64>,
    /// Stop answering after this many changes.
    #[arg(long)]
    after_changes: Option<u64>,
    /// How long to let the command go on after the trigger held something back (it can no
    /// longer touch the disk, but may still report), in milliseconds.
    #[arg(long, default_value_t = 300)]
    grace_ms: u64,
    /// The command to run, and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mode = match args.mode.as_str() {
        "strict" => Mode::strict(),
        "zero-fill" => Mode::zero_fill(),
        "journaled" => Mode::journaled(),
        other => {
            eprintln!("haul-powercut: unknown --mode {other} (strict, zero-fill, journaled)");
            return ExitCode::from(2);
        }
    };
    let pc = match PowerCut::mount(&args.backing, &args.mount, mode) {
        Ok(pc) => pc,
        Err(e) => {
            eprintln!("haul-powercut: cannot mount: {e}");
            return ExitCode::from(1);
        }
    };
    let trigger = match (args.after_durable, args.after_changes) {
        (Some(n), _) => Trigger::AfterDurableOps(n),
        (None, Some(n)) => Trigger::AfterMutations(n),
        (None, None) => Trigger::Never,
    };
    pc.cut_after(trigger);
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    let child = match pc.spawn(&cmd) {
        Ok(child) => child,
        Err(e) => {
            eprintln!("haul-powercut: cannot run {}: {e}", args.command[0]);
            return ExitCode::from(1);
        }
    };
    let day = Duration::from_secs(24 * 3600);
    if pc.wait_for_trigger(&child, Duration::from_millis(args.grace_ms), day) {
        std::thread::sleep(Duration::from_millis(args.grace_ms));
    }
    let exit = child.try_wait();
    let report = match pc.cut() {
        Ok(report) => report,
        Err(e) => {
            eprintln!("haul-powercut: the cut failed: {e}");
            return ExitCode::from(1);
        }
    };
    match exit {
        Some(exit) => println!("command ended before the cut: {exit:?}"),
        None => println!("command killed at the cut"),
    }
    print!("{report}");
    println!(
        "--- stdout ---\n{}",
        String::from_utf8_lossy(&child.stdout())
    );
    println!(
        "--- stderr ---\n{}",
        String::from_utf8_lossy(&child.stderr())
    );
    ExitCode::SUCCESS
}
