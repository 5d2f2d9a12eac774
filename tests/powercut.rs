//! Power cuts under a real `haul copy`, on the power-cut file system of `haul_testing::powercut`.
//!
//! The first tests check the file system itself: what was synced survives a cut, what was not
//! does not (or reads back as zeros), renames and unlinks are undone unless their directory
//! was synced, and a traced `syncfs` makes everything durable.
//!
//! The others copy a tree with a file of every size class onto the mount, cut the power at a
//! spread of points (after N durability operations, or after N changes; haul is killed at the
//! cut), and check two promises:
//! - every file the interrupted run reported as installed (`file_installed` with `--list`)
//!   is there after the cut, with the hash it reported;
//! - the same command run again afterwards exits 0, and its result, itself put through a
//!   power cut right after it exits (a successful run means "durable"), equals the source.
//!
//! `HAUL_POWERCUT_POINTS` sets how many cut points each mode tries (default 8). Needs root and
//! `/dev/fuse` (CI has both); elsewhere the tests say so and pass.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use haul_testing::powercut::{Exit, Mode, PowerCut, Trigger};
use haul_testing::{Haul, TreeBuilder, assert_same_tree};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

/// Whether FUSE can be mounted here (root and /dev/fuse); prints why not.
fn can_mount() -> bool {
    if !rustix::process::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("note: the power-cut tests need root and /dev/fuse (CI has both): skipped");
        return false;
    }
    true
}

/// A backing directory and a mount point under `dir`, named `name`.
fn place(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let backing = dir.join(format!("{name}.backing"));
    let mnt = dir.join(format!("{name}.mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    (backing, mnt)
}

fn sync_dir(dir: &Path) {
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
}

fn write(path: &Path, data: &[u8], sync: bool) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    if sync {
        f.sync_all().unwrap();
    }
}

#[test]
fn synced_data_survives_and_unsynced_is_dropped() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = place(tmp.path(), "t");
    std::fs::write(backing.join("old"), b"the old content").unwrap();
    let pc = PowerCut::mount(&backing, &mnt, Mode::strict()).unwrap();
    write(&mnt.join("synced"), b"hello", true);
    write(&mnt.join("unsynced"), b"not flushed", false);
    sync_dir(&mnt);
    write(
        &mnt.join("no-entry"),
        b"its directory was never synced",
        true,
    );
    // Overwritten in place without a sync: the old bytes come back.
    std::fs::write(mnt.join("old"), b"NEW").unwrap();
    let report = pc.cut().unwrap();
    println!("{report}");
    assert_eq!(std::fs::read(backing.join("synced")).unwrap(), b"hello");
    assert_eq!(std::fs::read(backing.join("unsynced")).unwrap(), b"");
    assert!(!backing.join("no-entry").exists(), "{report}");
    assert_eq!(
        std::fs::read(backing.join("old")).unwrap(),
        b"the old content"
    );
    assert!(report.removed.contains(&PathBuf::from("no-entry")));
}

#[test]
fn zero_fill_keeps_the_size_and_zeroes_unsynced_bytes() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = place(tmp.path(), "t");
    let pc = PowerCut::mount(&backing, &mnt, Mode::zero_fill()).unwrap();
    write(&mnt.join("half"), b"synced part", true);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("half"))
            .unwrap();
        f.write_all(b" and the rest").unwrap();
    }
    write(&mnt.join("never"), &[7u8; 5000], false);
    sync_dir(&mnt);
    let report = pc.cut().unwrap();
    println!("{report}");
    let half = std::fs::read(backing.join("half")).unwrap();
    assert_eq!(half.len(), "synced part and the rest".len());
    assert_eq!(&half[..11], b"synced part");
    assert!(half[11..].iter().all(|&b| b == 0), "{half:?}");
    let never = std::fs::read(backing.join("never")).unwrap();
    assert_eq!(never.len(), 5000);
    assert!(never.iter().all(|&b| b == 0));
}

#[test]
fn renames_and_unlinks_need_their_directory_synced() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = place(tmp.path(), "t");
    std::fs::create_dir(backing.join("a")).unwrap();
    std::fs::create_dir(backing.join("b")).unwrap();
    std::fs::create_dir(backing.join("c")).unwrap();
    std::fs::write(backing.join("a/undone"), b"1").unwrap();
    std::fs::write(backing.join("a/kept"), b"2").unwrap();
    std::fs::write(backing.join("a/gone"), b"3").unwrap();
    std::fs::write(backing.join("a/back"), b"4").unwrap();
    std::fs::write(backing.join("c/replaced"), b"old 5").unwrap();
    std::fs::write(backing.join("c/out"), b"6").unwrap();
    let pc = PowerCut::mount(&backing, &mnt, Mode::strict()).unwrap();
    // Out of c (which is synced) into b (which is not): undone.
    std::fs::rename(mnt.join("c/out"), mnt.join("b/out")).unwrap();
    std::fs::rename(mnt.join("a/undone"), mnt.join("b/undone")).unwrap();
    std::fs::rename(mnt.join("a/kept"), mnt.join("c/kept")).unwrap();
    std::fs::remove_file(mnt.join("a/back")).unwrap();
    write(&mnt.join("c/new"), b"new 5", true);
    std::fs::rename(mnt.join("c/new"), mnt.join("c/replaced")).unwrap();
    std::fs::remove_file(mnt.join("a/gone")).unwrap();
    std::fs::rename(mnt.join("a"), mnt.join("b/a")).unwrap();
    sync_dir(&mnt.join("c"));
    let report = pc.cut().unwrap();
    println!("{report}");
    let read = |p: &str| std::fs::read(backing.join(p)).ok();
    // Not synced: the rename into b, the unlinks in a and the move of a itself are undone.
    assert_eq!(read("a/undone").as_deref(), Some(&b"1"[..]), "{report}");
    assert_eq!(read("b/undone"), None);
    assert_eq!(read("a/back").as_deref(), Some(&b"4"[..]));
    assert_eq!(read("a/gone").as_deref(), Some(&b"3"[..]));
    assert!(!backing.join("b/a").exists());
    assert_eq!(read("c/out").as_deref(), Some(&b"6"[..]));
    assert_eq!(read("b/out"), None);
    // c was synced: the rename into it (from a, atomically) and the replacement stand.
    assert_eq!(read("c/kept").as_deref(), Some(&b"2"[..]));
    assert_eq!(read("a/kept"), None);
    assert_eq!(read("c/replaced").as_deref(), Some(&b"new 5"[..]));
    assert!(report.missing.is_empty(), "{report}");
}

#[test]
fn traced_syncfs_makes_everything_durable() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = place(tmp.path(), "t");
    let pc = PowerCut::mount(&backing, &mnt, Mode::strict()).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("mkdir d && echo data > d/f && sync -f . && echo later > g")
        .current_dir(&mnt);
    let child = pc.spawn(&cmd).unwrap();
    assert_eq!(
        child.wait(),
        Exit::Code(0),
        "{}",
        String::from_utf8_lossy(&child.stderr())
    );
    assert_eq!(pc.counters().syncfs, 1);
    let report = pc.cut().unwrap();
    println!("{report}");
    assert_eq!(std::fs::read(backing.join("d/f")).unwrap(), b"data\n");
    assert!(!backing.join("g").exists(), "{report}");
}

#[test]
fn the_trigger_freezes_the_writer() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = place(tmp.path(), "t");
    let pc = PowerCut::mount(&backing, &mnt, Mode::strict()).unwrap();
    pc.cut_after(Trigger::AfterDurableOps(2));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("for i in 1 2 3 4; do echo $i > f$i && sync -f . && echo synced $i; done")
        .current_dir(&mnt);
    let child = pc.spawn(&cmd).unwrap();
    assert!(pc.wait_for_trigger(&child, Duration::from_millis(500), Duration::from_secs(60)));
    assert_eq!(child.try_wait(), None, "the writer must hang, not finish");
    let report = pc.cut().unwrap();
    println!("{report}");
    assert_eq!(
        String::from_utf8_lossy(&child.stdout()),
        "synced 1\nsynced 2\n"
    );
    assert_eq!(std::fs::read(backing.join("f2")).unwrap(), b"2\n");
    assert!(!backing.join("f3").exists());
}

#[test]
fn journaled_keeps_names_and_metadata_but_not_data() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = place(tmp.path(), "t");
    let pc = PowerCut::mount(&backing, &mnt, Mode::journaled()).unwrap();
    write(&mnt.join("f"), &[9u8; 3000], false);
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 5,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 5,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        mnt.join("f"),
        &t,
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let report = pc.cut().unwrap();
    println!("{report}");
    let md = std::fs::metadata(backing.join("f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (md.len(), md.mtime(), md.mtime_nsec()),
        (3000, 1_600_000_000, 5)
    );
    assert!(
        std::fs::read(backing.join("f"))
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
}

// ---------------------------------------------------------------------------------------
// haul copy under power cuts

/// A source with a file of every size class, a sparse one, a few hundred small files, a
/// symlink and fixed mtimes (as a migration's source has).
fn source(dir: &Path) {
    let mut t = TreeBuilder::new(dir, 4242);
    t.file("empty", 0);
    t.file("one", 1);
    t.file("four-k", 4 * KIB);
    t.file("hundred-k", 100 * KIB);
    t.file("big/five-m", 5 * MIB);
    t.sparse(
        "big/sparse-40m",
        40 << 20,
        &[
            (0, 64 * KIB),
            (10 << 20, MIB),
            ((40 << 20) - 64 * KIB as u64, 64 * KIB),
        ],
    );
    for i in 0..300usize {
        t.file(format!("small/d{}/f{i}", i % 12), (i * 37) % (9 * KIB));
    }
    t.symlink("small/link", "d0/f0");
    t.mode("four-k", 0o600);
    for (i, rel) in [
        "empty",
        "one",
        "four-k",
        "hundred-k",
        "big/five-m",
        "big/sparse-40m",
    ]
    .iter()
    .enumerate()
    {
        t.mtime(rel, 1_700_000_000 + i as i64, 123_456_789);
    }
}

/// The `file_installed` events in `stdout`: (path, blake3).
fn installed(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "file_installed")
        .filter_map(|v| {
            Some((
                v["path"].as_str()?.to_string(),
                v["blake3"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn copy_command(cfg: &Path, src: &Path, dst: &Path) -> Command {
    let mut cmd = haul().command(cfg);
    cmd.args([
        OsStr::new("copy"),
        OsStr::new("--json"),
        OsStr::new("--list"),
    ])
    .arg(src)
    .arg(dst);
    cmd
}

/// What a file reported installed looks like after the cut, when it is not what was reported.
fn check_installed(dst: &Path, src: &Path, rel: &str, blake3: &str) -> Option<String> {
    let path = dst.join(rel);
    let want_len = std::fs::symlink_metadata(src.join(rel))
        .map(|m| m.len())
        .ok();
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(e) => return Some(format!("{rel}: missing after the cut ({e})")),
    };
    let got = blake3::hash(&data).to_hex().to_string();
    if got == blake3 {
        return None;
    }
    Some(format!(
        "{rel}: {}, blake3 {} != reported {}",
        describe(&src.join(rel), &path, &data, want_len),
        &got[..16],
        &blake3[..16.min(blake3.len())]
    ))
}

/// "N bytes, all zeros (source N bytes), mtime as the source's": what a wrong copy holds.
fn describe(src: &Path, copy: &Path, data: &[u8], want_len: Option<u64>) -> String {
    use std::os::unix::fs::MetadataExt;
    let zeros = !data.is_empty() && data.iter().all(|&b| b == 0);
    let mtime = |p: &Path| std::fs::symlink_metadata(p).map(|m| (m.mtime(), m.mtime_nsec()));
    let same_mtime = matches!((mtime(src), mtime(copy)), (Ok(a), Ok(b)) if a == b);
    format!(
        "{} bytes{} (source {} bytes), mtime {} the source's",
        data.len(),
        if zeros { ", all zeros" } else { "" },
        want_len.map_or("?".into(), |l| l.to_string()),
        if same_mtime { "equal to" } else { "unlike" }
    )
}

/// For the first files `tree_problems` says differ in content: what the copy holds.
fn explain(diff: &str, src_root: &Path, copy_root: &Path) -> String {
    let mut out = Vec::new();
    let mut more = 0;
    for line in diff.lines() {
        let Some(path) = line.strip_suffix(": content differs") else {
            continue;
        };
        let Ok(rel) = Path::new(path).strip_prefix(copy_root) else {
            continue;
        };
        if out.len() == 8 {
            more += 1;
            continue;
        }
        let data = std::fs::read(path).unwrap_or_default();
        let len = std::fs::metadata(src_root.join(rel)).map(|m| m.len()).ok();
        out.push(format!(
            "  {}: {}",
            rel.display(),
            describe(&src_root.join(rel), Path::new(path), &data, len)
        ));
    }
    if more > 0 {
        out.push(format!("  ... and {more} more files whose content differs"));
    }
    out.join("\n")
}

/// The files of `listed` that are not as reported under `dst` (see [`check_installed`]).
fn check_listed(listed: &[(String, String)], dst: &Path, src: &Path) -> Vec<String> {
    listed
        .iter()
        .filter_map(|(rel, b3)| check_installed(dst, src, rel, b3))
        .collect()
}

/// The differences `assert_same_tree` finds, as text (empty when the trees are equal).
fn tree_problems(src: &Path, copy: &Path) -> String {
    let (src, copy) = (src.to_path_buf(), copy.to_path_buf());
    // The panic hook is left alone (tests run side by side): its message lands in this
    // test's captured output.
    match std::panic::catch_unwind(move || assert_same_tree(&src, &copy)) {
        Ok(()) => String::new(),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "trees differ".into()),
    }
}

fn points() -> usize {
    std::env::var("HAUL_POWERCUT_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// Runs `cmd` traced on `pc` to its end (or panics after ten minutes).
fn run_traced(pc: &PowerCut, cmd: &Command) -> (Exit, Vec<u8>, Vec<u8>) {
    let child = pc.spawn(cmd).unwrap();
    let exit = child
        .wait_timeout(Duration::from_secs(600))
        .unwrap_or_else(|| panic!("haul did not finish in 10 minutes"));
    (exit, child.stdout(), child.stderr())
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Copies the source onto a power-cut mount in `mode` and cuts the power at a spread of
/// points; returns the problems found (empty: every promise held).
fn power_cut_campaign(mode: Mode) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    let cfg = tmp.path().join("cfg");
    let mut problems = Vec::new();

    // An uninterrupted run first: it must work on this file system at all, and its counts
    // place the cut points.
    let (backing, mnt) = place(tmp.path(), "baseline");
    let pc = PowerCut::mount(&backing, &mnt, mode).unwrap();
    let (exit, out, err) = run_traced(&pc, &copy_command(&cfg, &src, &mnt.join("dst")));
    let total = pc.counters();
    let report = pc.cut().unwrap();
    assert_eq!(
        exit,
        Exit::Code(0),
        "an uninterrupted haul copy onto the power-cut mount failed: {}\n{}",
        String::from_utf8_lossy(&err),
        tail(&out, 5)
    );
    println!(
        "baseline: {} files listed, {} ops, {} changes, {} durability ops \
         (fsync {}, fdatasync {}, fsyncdir {}, syncfs {})",
        installed(&out).len(),
        total.ops,
        total.mutations,
        total.durable(),
        total.fsync,
        total.fdatasync,
        total.fsyncdir,
        total.syncfs
    );
    let diff = tree_problems(&src, &backing.join("dst"));
    if !diff.is_empty() {
        problems.push(format!(
            "baseline: a run that exited 0, then a power cut: {diff}\n{report}"
        ));
    }

    // Half the points after the k-th durability operation, half after the k-th change, each
    // spread evenly over the run.
    let n = points().max(1);
    let (n_durable, n_changes) = (n.div_ceil(2) as u64, (n / 2) as u64);
    // The last point of each kind is the end of the run (after the closing syncfs).
    let spread = |j: u64, of: u64, total: u64| ((j + 1) * total).div_ceil(of).max(1);
    let mut triggers = Vec::new();
    for j in 0..n_durable.max(n_changes) {
        if j < n_durable {
            triggers.push(Trigger::AfterDurableOps(spread(
                j,
                n_durable,
                total.durable(),
            )));
        }
        if j < n_changes {
            triggers.push(Trigger::AfterMutations(spread(
                j,
                n_changes,
                total.mutations,
            )));
        }
    }

    let mut lost = 0;
    for (i, trigger) in triggers.iter().enumerate() {
        let (backing, mnt) = place(tmp.path(), &format!("cut{i}"));
        let dst = mnt.join("dst");
        let pc = PowerCut::mount(&backing, &mnt, mode).unwrap();
        pc.cut_after(*trigger);
        let child = pc.spawn(&copy_command(&cfg, &src, &dst)).unwrap();
        let fired =
            pc.wait_for_trigger(&child, Duration::from_millis(500), Duration::from_secs(300));
        // Let haul report what it will of what it did before the cut (it cannot touch the
        // disk any more), then the power goes: haul is killed, the disk rolled back.
        std::thread::sleep(Duration::from_millis(300));
        let ended = child.try_wait();
        let report = pc.cut().unwrap();
        let out = child.stdout();
        let listed = installed(&out);
        let bad = check_listed(&listed, &backing.join("dst"), &src);
        lost += bad.len();
        println!(
            "cut {i} at {trigger:?} (fired: {fired}, haul {}): {} files listed installed, \
             {} lost or wrong; {} names removed, {} restored, {} files' data rolled back",
            match ended {
                Some(e) => format!("had ended with {e:?}"),
                None => "killed at the cut".into(),
            },
            listed.len(),
            bad.len(),
            report.removed.len(),
            report.restored.len(),
            report.data.len()
        );
        if !bad.is_empty() {
            problems.push(format!(
                "cut {i} at {trigger:?}: files reported installed were lost or wrong after \
                 the cut:\n  {}\n{report}",
                bad.join("\n  ")
            ));
        }
        if !report.missing.is_empty() {
            problems.push(format!(
                "cut {i}: the power-cut file system lost inodes:\n{report}"
            ));
        }

        // The same command again, on the rolled-back disk; then a cut right after it exits.
        let pc = PowerCut::mount(&backing, &mnt, mode).unwrap();
        let (exit, out, err) = run_traced(&pc, &copy_command(&cfg, &src, &dst));
        let after = pc.cut().unwrap();
        if exit != Exit::Code(0) {
            problems.push(format!(
                "cut {i} at {trigger:?}: the re-run exited {exit:?}: {}\n{}",
                tail(&err, 10),
                tail(&out, 3)
            ));
            continue;
        }
        let diff = tree_problems(&src, &backing.join("dst"));
        if !diff.is_empty() {
            let summary: Vec<&str> = diff.lines().take(6).collect();
            problems.push(format!(
                "cut {i} at {trigger:?}: after the re-run (exit 0) and a power cut, the target \
                 differs from the source ({} differences):\n{}\n{}\nthe first cut: {report}\
                 the cut after the re-run: {after}",
                diff.lines().count().saturating_sub(1),
                summary.join("\n"),
                explain(&diff, &src, &backing.join("dst"))
            ));
        }
    }
    println!(
        "power cuts ({:?}/{:?}): {} points tried, {lost} files reported installed were lost or \
         wrong, {} problems",
        mode.namespace,
        mode.data,
        triggers.len(),
        problems.len()
    );
    problems
}

fn assert_no_problems(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// POSIX at its strictest: only what was fsynced (file data, directory entries) or covered
/// by a syncfs survives.
#[test]
fn haul_copy_survives_power_cuts_strict() {
    if !can_mount() {
        return;
    }
    assert_no_problems(power_cut_campaign(Mode::strict()));
}

/// A file system that commits names, sizes and mtimes ahead of the data (XFS, ext4 with
/// data=writeback): a file can have its final name, size and mtime, and zeros for bytes.
#[test]
fn haul_copy_survives_power_cuts_journaled() {
    if !can_mount() {
        return;
    }
    assert_no_problems(power_cut_campaign(Mode::journaled()));
}

/// Strict names, but a file whose name survived keeps its size with zeros for unsynced bytes.
#[test]
fn haul_copy_survives_power_cuts_zero_fill() {
    if !can_mount() {
        return;
    }
    assert_no_problems(power_cut_campaign(Mode::zero_fill()));
}

/// A run that ends with exit 1 (one file could not be created on the target) and then loses
/// power: what it reported installed must still be there.
#[test]
fn haul_copy_ending_in_exit_1_keeps_what_it_reported() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    std::fs::write(src.join("small/d3/poison"), b"cannot be created").unwrap();
    let cfg = tmp.path().join("cfg");
    let (backing, mnt) = place(tmp.path(), "t");
    let pc = PowerCut::mount(&backing, &mnt, Mode::strict()).unwrap();
    pc.fail_name(Some(OsStr::new("poison")));
    let (exit, out, err) = run_traced(&pc, &copy_command(&cfg, &src, &mnt.join("dst")));
    let counters = pc.counters();
    let report = pc.cut().unwrap();
    let listed = installed(&out);
    let bad = check_listed(&listed, &backing.join("dst"), &src);
    println!(
        "exit {exit:?}; {} files listed installed, {} lost or wrong after a power cut; \
         syncfs {}\n{report}",
        listed.len(),
        bad.len(),
        counters.syncfs
    );
    assert_eq!(exit, Exit::Code(1), "{}", tail(&err, 10));
    assert!(
        bad.is_empty(),
        "haul exited 1 and listed {} files as installed; after a power cut {} of them were \
         lost or wrong (syncfs calls seen: {}):\n  {}\n{report}",
        listed.len(),
        bad.len(),
        counters.syncfs,
        bad.iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// The README's own exit 1: an unreadable source file (haul runs as nobody) is named and the
/// rest is copied. Then the power goes: what the run reported installed must be there.
#[test]
fn haul_copy_ending_in_exit_1_for_an_unreadable_source_keeps_what_it_reported() {
    use std::os::unix::fs::PermissionsExt;
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let src = tmp.path().join("src");
    source(&src);
    std::fs::write(src.join("small/d3/locked"), b"root only").unwrap();
    std::fs::set_permissions(
        src.join("small/d3/locked"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let cfg = tmp.path().join("cfg");
    let (backing, mnt) = place(tmp.path(), "t");
    let pc = PowerCut::mount(&backing, &mnt, Mode::strict()).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_haul"))
        .env("HAUL_CONFIG_DIR", &cfg)
        .env("HAUL_CACHE_DIR", cfg.join("cache"))
        .args(["copy", "--json", "--list"])
        .arg(&src)
        .arg(mnt.join("dst"));
    let (exit, out, err) = run_traced(&pc, &cmd);
    let counters = pc.counters();
    let report = pc.cut().unwrap();
    let listed = installed(&out);
    let bad = check_listed(&listed, &backing.join("dst"), &src);
    println!(
        "exit {exit:?}; {} files listed installed, {} lost or wrong after a power cut; \
         syncfs {}\n{report}",
        listed.len(),
        bad.len(),
        counters.syncfs
    );
    assert_eq!(exit, Exit::Code(1), "{}", tail(&err, 10));
    assert!(
        bad.is_empty(),
        "haul exited 1 (unreadable source file) and listed {} files as installed; after a \
         power cut {} of them were lost or wrong (syncfs calls seen: {}):\n  {}\n{report}",
        listed.len(),
        bad.len(),
        counters.syncfs,
        bad.iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// A run that fills the target (exit 3: "everything verified is kept"), then loses power:
/// what it reported installed must still be there, and after the storage grows the same
/// command completes the copy.
#[test]
fn haul_copy_ending_in_exit_3_keeps_what_it_reported() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    let cfg = tmp.path().join("cfg");
    let (backing, mnt) = place(tmp.path(), "t");
    let pc = PowerCut::mount(&backing, &mnt, Mode::strict()).unwrap();
    pc.space_limit(Some(8 << 20));
    let (exit, out, err) = run_traced(&pc, &copy_command(&cfg, &src, &mnt.join("dst")));
    let counters = pc.counters();
    let report = pc.cut().unwrap();
    let listed = installed(&out);
    let bad = check_listed(&listed, &backing.join("dst"), &src);
    println!(
        "exit {exit:?}; {} files listed installed, {} lost or wrong after a power cut; \
         syncfs {}\n{report}",
        listed.len(),
        bad.len(),
        counters.syncfs
    );
    assert_eq!(exit, Exit::Code(3), "{}", tail(&err, 10));
    let mut problems = Vec::new();
    if !bad.is_empty() {
        problems.push(format!(
            "haul exited 3 and listed {} files as installed; after a power cut {} of them were \
             lost or wrong (syncfs calls seen: {}):\n  {}\n{report}",
            listed.len(),
            bad.len(),
            counters.syncfs,
            bad.iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    // The storage grew: the same command finishes the copy, durably.
    let pc = PowerCut::mount(&backing, &mnt, Mode::strict()).unwrap();
    let (exit, _, err) = run_traced(&pc, &copy_command(&cfg, &src, &mnt.join("dst")));
    let after = pc.cut().unwrap();
    if exit != Exit::Code(0) {
        problems.push(format!("the re-run exited {exit:?}: {}", tail(&err, 10)));
    } else {
        let diff = tree_problems(&src, &backing.join("dst"));
        if !diff.is_empty() {
            problems.push(format!(
                "after the re-run (exit 0) and a power cut the target differs: {diff}\n{after}"
            ));
        }
    }
    assert_no_problems(problems);
}

/// Every fsync and syncfs fails (EIO): the run must not report success, since a success
/// means the copy is durable.
#[test]
fn haul_copy_does_not_succeed_when_flushes_fail() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    let cfg = tmp.path().join("cfg");
    let (backing, mnt) = place(tmp.path(), "t");
    let pc = PowerCut::mount(&backing, &mnt, Mode::strict()).unwrap();
    pc.fail_syncs(true);
    let (exit, out, err) = run_traced(&pc, &copy_command(&cfg, &src, &mnt.join("dst")));
    let counters = pc.counters();
    let report = pc.cut().unwrap();
    let listed = installed(&out);
    let bad = check_listed(&listed, &backing.join("dst"), &src);
    println!(
        "exit {exit:?}; failed flushes: fsync {} fdatasync {} fsyncdir {} syncfs {}; {} files \
         listed, {} lost after the cut\nstderr: {}\n{report}",
        counters.fsync,
        counters.fdatasync,
        counters.fsyncdir,
        counters.syncfs,
        listed.len(),
        bad.len(),
        tail(&err, 5)
    );
    assert_ne!(
        exit,
        Exit::Code(0),
        "every flush failed with EIO (fsync {}, fdatasync {}, fsyncdir {}, syncfs {}), yet haul \
         exited 0; after a power cut {} of the {} files it listed were lost or wrong",
        counters.fsync,
        counters.fdatasync,
        counters.fsyncdir,
        counters.syncfs,
        bad.len(),
        listed.len()
    );
}
