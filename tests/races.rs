//! Symlink races against the receiver, in the manner of rsync's `*-symlink-race` tests.
//!
//! While a real `haul push` (or `haul copy`) runs, a racer thread swaps directories of the
//! destination for symlinks to a directory OUTSIDE the receiver's root and back, in a tight
//! loop. The outside directory holds a sentinel file and decoys named like the files being
//! copied, so any create, chmod, utimes, install-by-rename, rename-aside or removal that
//! followed a swapped-in symlink would show there. A push may fail (refusing a symlink is the
//! right answer); what must hold afterwards is that the outside tree is exactly as it was
//! (entries, content, mode, mtime), that no haul process panicked, and that the receiver still
//! serves.
//!
//! Two swap styles alternate between runs: an atomic `renameat2(RENAME_EXCHANGE)` of the
//! directory with a prepared symlink (the name never disappears), and rsync's rename the
//! directory away, symlink in its place, remove the symlink, rename the directory back.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use haul_testing::{Haul, Server, TreeBuilder, assert_same_tree, partial_bytes};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

/// Longest any single haul run may take before the test calls it a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(40);

/// Most kill-and-resume rounds [`resume_from_partials_while_directories_are_swapped`] runs
/// looking for one that resumed (it stops after three once one has).
const MAX_RESUME_ROUNDS: u64 = 8;

/// A fixed, old mtime for everything outside the root, so a utimes that escaped shows.
const OUTSIDE_MTIME: i64 = 1_000_000_000;

// ---------------------------------------------------------------------------------------------
// The outside directory and its snapshot.

/// Makes `dir` (outside every root): a sentinel, decoys with the names a transfer writes, the
/// names of the receiver's own state (`staging/`, `partial/`, `history`), a sub-directory, and
/// fixed modes and mtimes everywhere (the directories' last, since adding entries bumps them).
fn make_outside(dir: &Path) {
    let mut t = TreeBuilder::new(dir, 7);
    fs::write(dir.join("sentinel"), "precious: must never change\n").unwrap();
    t.mode("sentinel", 0o600);
    let mut names: Vec<String> = (0..18).map(|f| format!("f{f:02}")).collect();
    names.extend(["g0", "g1", "big0", "big1", "big2", "history"].map(String::from));
    for name in &names {
        t.file(name, 100);
        t.mode(name, 0o640);
    }
    for name in ["inner/g0", "inner/g1", "p00/f00"] {
        t.file(name, 50);
        t.mode(name, 0o640);
    }
    for empty in ["staging", "partial"] {
        t.dir(empty);
    }
    for (name, mode) in [("inner", 0o750), ("p00", 0o750), ("staging", 0o700)] {
        t.mode(name, mode);
    }
    t.mode("partial", 0o700);
    for entry in walk(dir) {
        let rel = entry
            .strip_prefix(dir)
            .unwrap()
            .as_os_str()
            .as_encoded_bytes();
        if !rel.is_empty() {
            t.mtime(rel, OUTSIDE_MTIME, 123);
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    set_mtime(dir, OUTSIDE_MTIME);
}

fn set_mtime(path: &Path, sec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: 123,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Every path under `dir`, deepest last (the directory itself first), not following symlinks.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let mut children: Vec<PathBuf> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// What `dir` holds: for every entry (and `dir` itself) its kind, mode, mtime, inode and
/// content hash or link target.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_symlink() {
                format!("link->{}", fs::read_link(&p).unwrap().display())
            } else if m.is_file() {
                format!("file {}", blake3::hash(&fs::read(&p).unwrap()).to_hex())
            } else {
                "dir".to_string()
            };
            let key = p.strip_prefix(dir).unwrap().display().to_string();
            let desc = format!(
                "{what} mode {:o} mtime {}.{:09} ino {} size {}",
                m.mode() & 0o7777,
                m.mtime(),
                m.mtime_nsec(),
                m.ino(),
                if m.is_dir() { 0 } else { m.len() },
            );
            (key, desc)
        })
        .collect()
}

/// Asserts that the outside directory is exactly as `before`, naming every difference.
fn assert_outside_untouched(outside: &Path, before: &BTreeMap<String, String>, when: &str) {
    let after = snapshot(outside);
    let mut problems = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => problems.push(format!("{k:?} disappeared (was {v})")),
            Some(a) if a != v => problems.push(format!("{k:?} changed: {v} -> {a}")),
            Some(_) => {}
        }
    }
    for (k, v) in &after {
        if !before.contains_key(k) {
            problems.push(format!("{k:?} appeared: {v}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{when}: the receiver acted OUTSIDE its root through a swapped-in symlink \
         (outside dir {}):\n{}",
        outside.display(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The racer.

#[derive(Clone, Copy, Debug)]
enum Swap {
    /// `renameat2(RENAME_EXCHANGE)` of the directory and a prepared symlink, and back.
    Exchange,
    /// rsync's style: rename away, symlink in place, unlink it, rename back.
    Rename,
}

/// A thread swapping directories for symlinks to `outside` until stopped.
struct Racer {
    stop: Arc<AtomicBool>,
    /// Swaps that put a symlink in place of a directory (a window the receiver could hit).
    windows: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Racer {
    fn start(targets: Vec<PathBuf>, outside: &Path, swap: Swap, seed: u64) -> Racer {
        let stop = Arc::new(AtomicBool::new(false));
        let windows = Arc::new(AtomicU64::new(0));
        let (s, w, outside) = (stop.clone(), windows.clone(), outside.to_path_buf());
        let handle = std::thread::spawn(move || {
            let mut rng = seed | 1;
            let mut next = move || {
                // xorshift64: cheap and deterministic per seed.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut idle = 0u32;
            while !s.load(Ordering::Relaxed) {
                let target = &targets[(next() % targets.len() as u64) as usize];
                let hold = next() % 4;
                let hit = match swap {
                    Swap::Exchange => exchange_cycle(target, &outside, hold),
                    Swap::Rename => rename_cycle(target, &outside, hold),
                };
                if hit {
                    w.fetch_add(1, Ordering::Relaxed);
                    idle = 0;
                    // Leave the receiver a moment with the directory in place: the machine
                    // has two cores, and the transfer must progress for the races to matter.
                    std::thread::sleep(Duration::from_micros(20));
                } else {
                    idle += 1;
                    if idle.is_multiple_of(64) {
                        // Nothing to swap yet (the receiver has not made the directories).
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
        });
        Racer {
            stop,
            windows,
            handle: Some(handle),
        }
    }

    fn windows(&self) -> u64 {
        self.windows.load(Ordering::Relaxed)
    }

    /// Stops the racer (it leaves every directory back in place where it can).
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("the racer thread panicked");
        }
        self.windows()
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Keeps the symlink in place for a moment: from a bare yield to a few hundred microseconds.
fn hold_window(hold: u64) {
    match hold {
        0 => std::thread::yield_now(),
        1 => (0..2000).for_each(|_| std::hint::spin_loop()),
        2 => std::thread::sleep(Duration::from_micros(50)),
        _ => std::thread::sleep(Duration::from_micros(300)),
    }
}

fn is_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn is_symlink(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_symlink())
}

/// One atomic swap of `target` (a directory) with `target.racer` (a symlink to `outside`) and
/// back. True if the symlink stood in the directory's place.
fn exchange_cycle(target: &Path, outside: &Path, hold: u64) -> bool {
    if !is_dir(target) {
        return false;
    }
    let spare = sibling(target, ".racer");
    if !is_symlink(&spare) {
        if fs::symlink_metadata(&spare).is_ok() {
            // The receiver moved things around (rename-aside): park what is there.
            let _ = fs::rename(&spare, sibling(target, &format!(".racer-{}", now_ns())));
        }
        if symlink(outside, &spare).is_err() {
            return false;
        }
    }
    let exchange = || {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &spare,
            rustix::fs::CWD,
            target,
            rustix::fs::RenameFlags::EXCHANGE,
        )
    };
    if exchange().is_err() {
        return false;
    }
    hold_window(hold);
    // Back: the directory returns to its name, the symlink to the spare name.
    let _ = exchange();
    true
}

/// rsync's style: rename `target` away, put a symlink to `outside` in its place, remove the
/// symlink and rename the directory back. True if the symlink stood in the directory's place.
fn rename_cycle(target: &Path, outside: &Path, hold: u64) -> bool {
    if !is_dir(target) {
        return false;
    }
    let away = sibling(target, ".away");
    if fs::rename(target, &away).is_err() {
        return false;
    }
    let placed = symlink(outside, target).is_ok();
    if placed {
        hold_window(hold);
        if is_symlink(target) {
            let _ = fs::remove_file(target);
        }
    }
    // Fails if the receiver made a new, non-empty directory meanwhile: then `away` stays.
    let _ = fs::rename(&away, target);
    placed
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Removes what the racer left inside a destination (`*.racer`, `*.racer-N`, `*.away`).
fn remove_racer_leftovers(dir: &Path) {
    for p in walk(dir).into_iter().rev() {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".racer") || name.contains(".racer-") || name.ends_with(".away") {
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p).unwrap(),
                Ok(_) => fs::remove_file(&p).unwrap(),
                Err(_) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running haul.

/// The result of one haul run: its exit status (None if killed by the test) and its output.
struct Ran {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    /// How many racer windows opened while it ran.
    windows: u64,
}

impl Ran {
    /// The `--json` summary the run printed last (`Null` if it printed none: killed, or it
    /// failed before the transfer ended).
    fn summary(&self) -> serde_json::Value {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .rfind(|v| v["event"] == "summary")
            .unwrap_or_default()
    }

    /// Lines where the receiver refused a symlink it met: the racer won that moment.
    fn symlink_refusals(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.contains("symbolic link") || l.contains("not a directory"))
            .count()
    }
}

/// Runs haul with `args`, output to files under `logs`; kills it (SIGKILL) once `kill_when`
/// says so, and fails the test if it runs past [`RUN_TIMEOUT`].
fn run(
    cfg: &Path,
    args: &[OsString],
    logs: &Path,
    racer: Option<&Racer>,
    mut kill_when: impl FnMut() -> bool,
) -> Ran {
    fs::create_dir_all(logs).unwrap();
    let (out_path, err_path) = (logs.join("stdout"), logs.join("stderr"));
    let before = racer.map_or(0, Racer::windows);
    let mut child = haul()
        .command(cfg)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn haul");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if kill_when() {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "haul {:?} ran longer than {RUN_TIMEOUT:?} (a hang?); stderr:\n{}",
                args,
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let ran = Ran {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        windows: racer.map_or(0, Racer::windows) - before,
    };
    assert!(
        !ran.stderr.contains("panicked") && !ran.stdout.contains("panicked"),
        "haul {args:?} panicked:\n{}",
        ran.stderr
    );
    if let Some(status) = ran.status {
        // 0 done, 1 error (a refused symlink is an error): never a crash or a signal.
        assert!(
            matches!(status.code(), Some(0 | 1)),
            "haul {args:?} ended with {status}; stderr:\n{}",
            ran.stderr
        );
    }
    ran
}

fn never() -> bool {
    false
}

/// A test's scratch space: a receiver root, an outside directory, configs and a token.
struct Bench {
    tmp: tempfile::TempDir,
    outside: PathBuf,
    outside_before: BTreeMap<String, String>,
}

impl Bench {
    fn new() -> Bench {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("root")).unwrap();
        haul_testing::cmd::write_secret(&tmp.path().join("token"), "race-token\n");
        let outside = tmp.path().join("outside");
        make_outside(&outside);
        let outside_before = snapshot(&outside);
        Bench {
            tmp,
            outside,
            outside_before,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn root(&self) -> PathBuf {
        self.path("root")
    }

    fn serve(&self) -> Server {
        haul().serve(
            &self.root(),
            &self.path("server-cfg"),
            Some(&self.path("token")),
        )
    }

    fn push_args(&self, server: &Server, src: &Path, dest: &str, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["push".into()];
        args.extend(extra.iter().map(OsString::from));
        args.extend([
            src.as_os_str().to_owned(),
            server.url(dest).into(),
            "--fingerprint".into(),
            server.fingerprint.clone().into(),
            "--token-file".into(),
            self.path("token").into(),
        ]);
        args
    }

    fn push(&self, server: &Server, src: &Path, dest: &str, extra: &[&str], log: &str) -> Ran {
        let args = self.push_args(server, src, dest, extra);
        run(
            &self.path("client-cfg"),
            &args,
            &self.path(log),
            None,
            never,
        )
    }

    fn check_outside(&self, when: &str) {
        assert_outside_untouched(&self.outside, &self.outside_before, when);
    }

    /// Stops the receiver, asserting it was still running and never panicked.
    fn finish(&self, mut server: Server, when: &str) {
        assert!(
            server.is_running(),
            "{when}: the receiver died during the races"
        );
        let err = server.stop();
        assert!(
            !err.contains("panicked"),
            "{when}: the receiver panicked:\n{err}"
        );
        self.check_outside(when);
    }
}

/// Counts across a scenario's runs, printed for the record (`--nocapture`).
#[derive(Default)]
struct Tally {
    runs: u64,
    failed_runs: u64,
    windows: u64,
    refusals: u64,
}

impl Tally {
    fn add(&mut self, ran: &Ran) {
        self.runs += 1;
        self.failed_runs += u64::from(ran.status.is_none_or(|s| !s.success()));
        self.windows += ran.windows;
        self.refusals += ran.symlink_refusals() as u64;
        if ran.status.is_some_and(|s| !s.success()) {
            // For the record: what the racer made haul refuse (shown with --nocapture).
            let first: Vec<&str> = ran.stderr.lines().take(2).collect();
            eprintln!("  run failed as expected: {}", first.join(" | "));
        }
    }

    fn report(&self, scenario: &str) {
        eprintln!(
            "race tally [{scenario}]: {} runs, {} ended in error or were killed, {} symlink \
             windows opened during the runs, {} refusals of a met symlink reported",
            self.runs, self.failed_runs, self.windows, self.refusals
        );
        assert!(
            self.windows > 0,
            "[{scenario}] the racer never swapped a directory while haul ran: the test proved nothing"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Source trees.

/// `dirs` directories `dNNN`, each with 18 small files `fNN` and `inner/g0`, `inner/g1`; every
/// `big_every`th directory also gets `big0` (several 64 KiB chunks: a partial file).
fn small_tree(dir: &Path, dirs: usize, big_every: usize, seed: u64) {
    let mut t = TreeBuilder::new(dir, seed);
    for d in 0..dirs {
        for f in 0..18 {
            t.file(format!("d{d:03}/f{f:02}"), 100 + (d * 37 + f * 91) % 3000);
        }
        t.file(format!("d{d:03}/inner/g0"), 64);
        t.file(format!("d{d:03}/inner/g1"), 700);
        if big_every > 0 && d % big_every == 0 {
            t.file(format!("d{d:03}/big0"), 300_000 + d);
        }
    }
}

/// The racer's targets for a copy of [`small_tree`] at `dest`: every directory, and `dest`.
fn small_tree_targets(dest: &Path, dirs: usize) -> Vec<PathBuf> {
    let mut v = vec![dest.to_path_buf()];
    for d in 0..dirs {
        v.push(dest.join(format!("d{d:03}")));
        v.push(dest.join(format!("d{d:03}/inner")));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// Create: a fresh destination each run (new directories, new files, install by rename, the
/// directories' metadata at the end), with multi-chunk files (partials) and one file that
/// must fail (a directory is in its way, so its staging file is removed).
#[test]
fn push_of_a_new_tree_while_its_directories_are_swapped() {
    let b = Bench::new();
    let src = b.path("src");
    small_tree(&src, 200, 25, 1);
    let server = b.serve();
    let mut tally = Tally::default();
    for i in 0..6 {
        let dest = format!("new{i}");
        // A directory where d005/f03 must go: that file fails after being staged.
        fs::create_dir_all(b.root().join(&dest).join("d005/f03/blocker")).unwrap();
        let swap = if i % 2 == 0 {
            Swap::Exchange
        } else {
            Swap::Rename
        };
        let racer = Racer::start(
            small_tree_targets(&b.root().join(&dest), 200),
            &b.outside,
            swap,
            i + 1,
        );
        let args = b.push_args(&server, &src, &dest, &["--chunk-size", "64K"]);
        let ran = run(
            &b.path("client-cfg"),
            &args,
            &b.path(&format!("log{i}")),
            Some(&racer),
            never,
        );
        racer.stop();
        tally.add(&ran);
        assert_ne!(
            ran.status.and_then(|s| s.code()),
            Some(0),
            "d005/f03 cannot be installed"
        );
        b.check_outside(&format!("create run {i} ({swap:?})"));
    }
    tally.report("create");

    // With the racer gone, the same push completes the last copy: nothing was wedged.
    let dest = b.root().join("new5");
    remove_racer_leftovers(&dest);
    // The blocker may be gone already: if the receiver made d005 again while the racer had
    // it renamed away, the original (with the blocker) was left as `d005.away`, removed above,
    // and d005/f03 may be missing or the file the receiver has since installed there (which
    // stays). Checked by kind, not removed blindly: d005 must be a real directory by now.
    assert!(
        !is_symlink(&dest.join("d005")),
        "the racer left new5/d005 a symlink"
    );
    let blocker = dest.join("d005/f03");
    if is_dir(&blocker) {
        fs::remove_dir_all(&blocker).unwrap_or_else(|e| panic!("remove the blocker: {e}"));
    }
    let ran = b.push(&server, &src, "new5", &["--chunk-size", "64K"], "log-clean");
    assert_eq!(ran.status.and_then(|s| s.code()), Some(0), "{}", ran.stderr);
    assert_same_tree(&src, &dest);
    b.finish(server, "create");
}

/// chmod and utimes of files already on the target (mode-only changes, and mtime changes
/// with the same content), and every directory's mode and mtime at the end of the session.
#[test]
fn metadata_updates_while_directories_are_swapped() {
    let b = Bench::new();
    let src = b.path("src");
    small_tree(&src, 100, 0, 2);
    let server = b.serve();
    let first = b.push(&server, &src, "meta", &[], "log-first");
    assert_eq!(
        first.status.and_then(|s| s.code()),
        Some(0),
        "{}",
        first.stderr
    );
    let mut tally = Tally::default();
    for i in 0..5u32 {
        // New modes everywhere, new mtimes on half the files: only metadata travels.
        for (n, p) in walk(&src).into_iter().skip(1).enumerate() {
            let dir = is_dir(&p);
            let mode = match (dir, i % 2) {
                (true, 0) => 0o750,
                (true, _) => 0o755,
                (false, 0) => 0o600,
                (false, _) => 0o644,
            };
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            if !dir && n % 2 == 0 {
                set_mtime(&p, 1_500_000_000 + i64::from(i) * 1000 + n as i64);
            }
        }
        for p in walk(&src).into_iter().filter(|p| is_dir(p)) {
            set_mtime(&p, 1_400_000_000 + i64::from(i));
        }
        let swap = if i % 2 == 0 {
            Swap::Rename
        } else {
            Swap::Exchange
        };
        let racer = Racer::start(
            small_tree_targets(&b.root().join("meta"), 100),
            &b.outside,
            swap,
            100 + u64::from(i),
        );
        let args = b.push_args(&server, &src, "meta", &[]);
        let ran = run(
            &b.path("client-cfg"),
            &args,
            &b.path(&format!("log{i}")),
            Some(&racer),
            never,
        );
        racer.stop();
        tally.add(&ran);
        b.check_outside(&format!("metadata run {i} ({swap:?})"));
    }
    tally.report("chmod/utimes");
    b.finish(server, "metadata");
}

/// `--rename-aside proj`: the previous copy is renamed to `proj.N` while the racer swaps
/// `proj`, its sub-directories and the aside copies; chunks are reused from the aside copy.
#[test]
fn rename_aside_while_directories_are_swapped() {
    let b = Bench::new();
    let src = b.path("src");
    let mut t = TreeBuilder::new(&src, 3);
    for d in 0..40 {
        for f in 0..10 {
            t.file(format!("proj/p{d:02}/f{f:02}"), 200 + d * 10 + f);
        }
    }
    t.file("proj/p00/big0", 400_000);
    t.file("keep/f00", 1000);
    let server = b.serve();
    let first = b.push(&server, &src, "ra", &["--chunk-size", "64K"], "log-first");
    assert_eq!(
        first.status.and_then(|s| s.code()),
        Some(0),
        "{}",
        first.stderr
    );
    let ra = b.root().join("ra");
    let mut targets = vec![ra.join("proj"), ra.join("keep")];
    targets.extend((0..40).map(|d| ra.join(format!("proj/p{d:02}"))));
    targets.extend((1..8).map(|n| ra.join(format!("proj.{n}"))));
    targets.extend((1..8).map(|n| ra.join(format!("proj.{n}/p00"))));
    let mut tally = Tally::default();
    let mut reused_bytes = 0;
    for i in 0..5u64 {
        // Something changes, so chunks both travel and are reused from the aside copy.
        t.file(format!("proj/p{:02}/f00", i * 7), 5000);
        let swap = if i % 2 == 0 {
            Swap::Exchange
        } else {
            Swap::Rename
        };
        let racer = Racer::start(targets.clone(), &b.outside, swap, 200 + i);
        let args = b.push_args(
            &server,
            &src,
            "ra",
            &["--chunk-size", "64K", "--rename-aside", "proj", "--json"],
        );
        let ran = run(
            &b.path("client-cfg"),
            &args,
            &b.path(&format!("log{i}")),
            Some(&racer),
            never,
        );
        racer.stop();
        tally.add(&ran);
        b.check_outside(&format!("rename-aside run {i} ({swap:?})"));
        // No summary if the racer made the whole run fail.
        reused_bytes += ran.summary()["bytes_reused"].as_u64().unwrap_or(0);
    }
    eprintln!("race tally [rename-aside]: {reused_bytes} bytes reused from the aside copies");
    assert!(
        reused_bytes > 0,
        "no run reused a chunk from the aside copy: the rename-aside reuse never happened"
    );
    tally.report("rename-aside");
    b.finish(server, "rename-aside");
}

/// Resume: a push of multi-chunk files is killed once partials exist under `.haul/partial`,
/// then run again to install them; the racer swaps the destination's directories and the
/// receiver's own `.haul/partial` and `.haul/staging` throughout.
///
/// The re-runs' `--json` summaries must show the resume happened: a re-run after a kill never
/// sends the whole tree again, and at least one takes chunks back from the partials
/// (`bytes_reused`). The racer may legitimately spoil a resume (a partial met through a
/// swapped-in symlink is not used), so up to [`MAX_RESUME_ROUNDS`] rounds run until one
/// resumes, rather than betting the test on three.
#[test]
fn resume_from_partials_while_directories_are_swapped() {
    let b = Bench::new();
    let src = b.path("src");
    let mut t = TreeBuilder::new(&src, 4);
    for d in 0..30 {
        t.file(format!("r{d:02}/big0"), 1_000_000 + d);
        t.file(format!("r{d:02}/inner/g0"), 3000);
        t.file(format!("r{d:02}/f00"), 100);
    }
    let server = b.serve();
    let partial = b.root().join(".haul/partial");
    let mut tally = Tally::default();
    let (mut rounds, mut killed_runs, mut resumed, mut reused_bytes) = (0, 0, 0, 0);
    for i in 0..MAX_RESUME_ROUNDS {
        if i >= 3 && resumed > 0 {
            break;
        }
        rounds += 1;
        let dest = format!("res{i}");
        let d = b.root().join(&dest);
        let mut targets = vec![d.clone(), partial.clone(), b.root().join(".haul/staging")];
        targets.extend((0..30).map(|n| d.join(format!("r{n:02}"))));
        targets.extend((0..30).map(|n| d.join(format!("r{n:02}/inner"))));
        let swap = if i % 2 == 0 {
            Swap::Exchange
        } else {
            Swap::Rename
        };
        let racer = Racer::start(targets, &b.outside, swap, 300 + i);
        let args = b.push_args(&server, &src, &dest, &["--chunk-size", "64K", "--json"]);
        let cfg = b.path("client-cfg");
        // Kill the sender once this run has written a few MB of chunks into partials. What
        // earlier rounds left there does not count (a file that failed keeps its partial):
        // with that over the threshold already, the kill came before anything was sent.
        let left_before = partial_bytes(&b.root());
        let killed = run(
            &cfg,
            &args,
            &b.path(&format!("log{i}-a")),
            Some(&racer),
            || partial_bytes(&b.root()) >= left_before + (3 << 20),
        );
        let was_killed = killed.status.is_none();
        killed_runs += u64::from(was_killed);
        tally.add(&killed);
        let again = run(
            &cfg,
            &args,
            &b.path(&format!("log{i}-b")),
            Some(&racer),
            never,
        );
        tally.add(&again);
        racer.stop();
        b.check_outside(&format!("resume run {i} ({swap:?})"));
        // No summary if the racer made the whole run fail; then there is nothing to check.
        let summary = again.summary();
        let count = |field: &str| summary[field].as_u64();
        if let (true, Some(total), Some(sent)) =
            (was_killed, count("bytes_total"), count("bytes_sent"))
        {
            let reused = count("bytes_reused").unwrap_or(0);
            eprintln!(
                "  resume round {i}: sent {sent} of {total} bytes, {reused} reused from \
                 partials, {} files already installed",
                summary["files_unchanged"]
            );
            assert!(
                sent < total,
                "round {i}: the run after the kill sent all {total} bytes again: nothing the \
                 killed run received was kept; summary: {summary}"
            );
            resumed += u64::from(reused > 0);
            reused_bytes += reused;
        }
    }
    eprintln!(
        "race tally [resume]: {killed_runs} of {rounds} first runs were killed with partials on \
         disk; {resumed} re-runs took {reused_bytes} bytes back from them"
    );
    assert!(
        resumed > 0,
        "in {rounds} rounds ({killed_runs} killed with partials on disk) no re-run reused a \
         chunk from the partials: the resume this test is about never happened"
    );
    tally.report("resume");
    b.finish(server, "resume");
}

/// `haul copy SRC DST`: the embedded receiver's root is DST, and the racer swaps DST's
/// sub-directories and DST's own `.haul` state directory (made and removed by each copy).
#[test]
fn copy_while_destination_directories_are_swapped() {
    let b = Bench::new();
    let src = b.path("src");
    small_tree(&src, 100, 20, 5);
    let mut tally = Tally::default();
    for i in 0..5u64 {
        let dst = b.path(&format!("copy{i}"));
        // Not DST itself: it is the root the user named, opened by path like `cp -r` would.
        let mut targets = small_tree_targets(&dst, 100).split_off(1);
        for state in [".haul", ".haul/staging", ".haul/partial"] {
            // Often, so the moments the copy opens and removes its state are covered.
            targets.extend(std::iter::repeat_n(dst.join(state), 20));
        }
        let swap = if i % 2 == 0 {
            Swap::Exchange
        } else {
            Swap::Rename
        };
        let racer = Racer::start(targets, &b.outside, swap, 400 + i);
        let args: Vec<OsString> = vec![
            "copy".into(),
            "--chunk-size".into(),
            "64K".into(),
            src.clone().into(),
            dst.clone().into(),
        ];
        let ran = run(
            &b.path("client-cfg"),
            &args,
            &b.path(&format!("log{i}")),
            Some(&racer),
            never,
        );
        racer.stop();
        tally.add(&ran);
        b.check_outside(&format!("copy run {i} ({swap:?})"));
    }
    tally.report("copy");
}

/// `haul copy` removes its state directory `DST/.haul` (staging, partial, history) when it is
/// done. The racer swaps only `DST/.haul` for a symlink to the outside directory, which holds
/// `staging/`, `partial/` and `history` of its own: the clean-up must not remove those.
#[test]
fn copy_cleanup_of_its_state_dir_while_it_is_swapped() {
    let b = Bench::new();
    let src = b.path("src");
    small_tree(&src, 3, 0, 7);
    let mut tally = Tally::default();
    for i in 0..10u64 {
        let dst = b.path(&format!("state{i}"));
        let racer = Racer::start(vec![dst.join(".haul")], &b.outside, Swap::Exchange, 500 + i);
        let args: Vec<OsString> = vec!["copy".into(), src.clone().into(), dst.clone().into()];
        let ran = run(
            &b.path("client-cfg"),
            &args,
            &b.path(&format!("log{i}")),
            Some(&racer),
            never,
        );
        racer.stop();
        tally.add(&ran);
        b.check_outside(&format!("copy state-dir run {i}"));
    }
    tally.report("copy state dir");
}

/// Not a race: `dest/sub` is already a symlink to the outside directory when the push starts.
/// The push must fail with an error naming that path, and write nothing outside.
#[test]
fn a_symlink_already_in_the_destination_is_refused_by_name() {
    let b = Bench::new();
    let src = b.path("src");
    let mut t = TreeBuilder::new(&src, 6);
    t.file("top.txt", 500);
    for f in 0..5 {
        t.file(format!("sub/f{f:02}"), 1000 + f);
    }
    t.file("sub/inner/g0", 100);
    t.file("sub/big0", 200_000);
    fs::create_dir_all(b.root().join("dest")).unwrap();
    let link = b.root().join("dest/sub");
    symlink(&b.outside, &link).unwrap();
    let server = b.serve();
    let ran = b.push(&server, &src, "dest", &["--chunk-size", "64K"], "log");
    assert_eq!(
        ran.status.and_then(|s| s.code()),
        Some(1),
        "a push through a symlink must fail; stderr:\n{}",
        ran.stderr
    );
    let shown = link.display().to_string();
    assert!(
        ran.stderr.contains(&shown) && ran.stderr.contains("symbolic link"),
        "the error must name {shown} as a symbolic link; stderr:\n{}",
        ran.stderr
    );
    assert!(is_symlink(&link), "the symlink itself is left alone");
    assert_eq!(fs::read_link(&link).unwrap(), b.outside);
    // What is not behind the link is still copied.
    assert_eq!(
        fs::read(b.root().join("dest/top.txt")).unwrap(),
        fs::read(src.join("top.txt")).unwrap()
    );
    b.finish(server, "pre-existing symlink");
}
