//! Snapshots end to end, with the real binary and real QUIC on loopback: a snapshot taken on a
//! `haul serve` stays byte for byte (and stat for stat) what it was while the live tree is
//! updated every way a push updates it (a changed file, a few changed chunks of a big file,
//! metadata-only changes, a change only `--checksum` sees, `--delete`), and `haul pull
//! --snapshot` gives the original back. Once with hard links (the temp directory's file system,
//! and a tmpfs), once with reflinks on an XFS image. Then: the local `haul snapshot` commands
//! on a receiver root; snapshots through `--grant` tokens and their scopes; interrupted
//! snapshots; and a local `haul copy` into a snapshotted subtree.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use haul_testing::fidelity::{compare_trees, rsync_itemize};
use haul_testing::{
    Haul, Server, Tmpfs, TreeBuilder, XfsLoop, assert_same_tree, assert_success, summary_of,
};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

const MIB: u64 = 1 << 20;
/// The big file: 64 MiB of random data (so every 4 MiB chunk is distinct) and an odd tail.
const BIG_LEN: u64 = 64 * MIB + 999;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A `haul serve` on `root` and what a client needs to talk to it.
struct Site {
    server: Server,
    token: PathBuf,
    client_cfg: PathBuf,
}

impl Site {
    fn start(root: &Path, work: &Path) -> Site {
        let token = work.join("token");
        std::fs::write(&token, "snapsh0t-token\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let server = haul().serve(root, &work.join("server-cfg"), Some(&token));
        Site {
            server,
            token,
            client_cfg: work.join("client-cfg"),
        }
    }

    /// Runs `haul ARGS... --fingerprint FP --token-file T`.
    fn run(&self, args: &[&OsStr]) -> Output {
        let mut all: Vec<&OsStr> = args.to_vec();
        all.extend([
            os("--fingerprint"),
            os(&self.server.fingerprint),
            os("--token-file"),
            self.token.as_os_str(),
        ]);
        haul().run(&self.client_cfg, &all)
    }

    /// Pushes `src` to PATH with `--json` and `extra`; asserts it succeeded with no failed file.
    fn push(&self, src: &Path, path: &str, extra: &[&str]) -> serde_json::Value {
        let url = self.server.url(path);
        let mut args = vec![os("push"), os("--json")];
        args.extend(extra.iter().map(|a| os(a)));
        args.extend([src.as_os_str(), os(&url)]);
        let out = self.run(&args);
        assert_success(&out);
        let s = summary_of(&out);
        assert_eq!(s["files_failed"], 0, "push {extra:?}: {s}");
        s
    }

    /// Pulls PATH into `dest` (from the snapshot `id` if given) and asserts it succeeded.
    fn pull(&self, path: &str, dest: &Path, snapshot: Option<&str>) -> serde_json::Value {
        let url = self.server.url(path);
        let mut args = vec![os("pull"), os("--json"), os(&url), dest.as_os_str()];
        if let Some(id) = snapshot {
            args.extend([os("--snapshot"), os(id)]);
        }
        let out = self.run(&args);
        assert_success(&out);
        let s = summary_of(&out);
        assert_eq!(s["files_failed"], 0, "pull {path} {snapshot:?}: {s}");
        s
    }

    /// `haul snapshot create --json quic://.../PATH --label LABEL`: its one JSON object.
    fn snapshot_create(&self, path: &str, label: &str) -> serde_json::Value {
        let url = self.server.url(path);
        let out = self.run(&[
            os("snapshot"),
            os("create"),
            os("--json"),
            os(&url),
            os("--label"),
            os(label),
        ]);
        assert_success(&out);
        one_json(&out)
    }

    /// `haul snapshot list --json quic://.../`: the array.
    fn snapshot_list(&self) -> Vec<serde_json::Value> {
        let url = self.server.url("");
        let out = self.run(&[os("snapshot"), os("list"), os("--json"), os(&url)]);
        assert_success(&out);
        json_array(&out)
    }

    fn snapshot_delete(&self, id: &str) {
        let url = self.server.url("");
        let out = self.run(&[os("snapshot"), os("delete"), os(&url), os(id)]);
        assert_success(&out);
    }
}

/// The single JSON object (or array) a `--json` snapshot command prints on stdout.
fn one_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let values: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\nstdout:\n{stdout}"))
        })
        .collect();
    assert_eq!(values.len(), 1, "expected one JSON line, got:\n{stdout}");
    values.into_iter().next().unwrap()
}

fn json_array(out: &Output) -> Vec<serde_json::Value> {
    match one_json(out) {
        serde_json::Value::Array(items) => items,
        other => panic!("expected a JSON array, got {other}"),
    }
}

/// Everything a snapshot's entry must keep: kind, permission bits, owner, size, mtime to the
/// nanosecond, inode, extended attributes, the BLAKE3 of a file's content and a symlink's
/// target. (Not the link count or ctime: replacing the live name of a hard-linked file changes
/// those, rightly.)
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ino: u64,
    xattrs: BTreeMap<String, String>,
    blake3: Option<String>,
    target: Option<PathBuf>,
}

/// Every entry under `dir` (itself as ""), by path from it.
fn record(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), &mut out);
    out
}

fn walk(base: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    let path = base.join(rel);
    let md = std::fs::symlink_metadata(&path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    let blake3 = ft.is_file().then(|| {
        let mut hasher = blake3::Hasher::new();
        let file = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        hasher
            .update_reader(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        hasher.finalize().to_hex().to_string()
    });
    out.insert(
        rel.to_path_buf(),
        Entry {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if ft.is_dir() { 0 } else { md.len() },
            mtime: (md.mtime(), md.mtime_nsec()),
            ino: md.ino(),
            xattrs: xattrs(&path),
            blake3,
            target: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
        },
    );
    if ft.is_dir() {
        let mut names: Vec<OsString> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            walk(base, &rel.join(name), out);
        }
    }
}

/// The extended attributes of `path` (not following a symlink) the test can read, names and
/// values with unprintable bytes escaped.
fn xattrs(path: &Path) -> BTreeMap<String, String> {
    let mut list = vec![0u8; 64 << 10];
    let n = match rustix::fs::llistxattr(path, &mut list[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => panic!("llistxattr {}: {e}", path.display()),
    };
    let mut out = BTreeMap::new();
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 64 << 10];
        let k = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value[..])
            .unwrap_or_else(|e| panic!("lgetxattr {}: {e}", path.display()));
        value.truncate(k);
        out.insert(
            name.escape_ascii().to_string(),
            value.escape_ascii().to_string(),
        );
    }
    out
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("lsetxattr {}: {e}", path.display()));
}

/// Asserts that `copy` is an exact copy of `source`: [`assert_same_tree`], and the
/// independent walk of [`compare_trees`] (owners, xattrs, hard-link groups too).
#[track_caller]
fn assert_identical(source: &Path, copy: &Path) {
    assert_same_tree(source, copy);
    let problems = compare_trees(source, copy);
    assert!(
        problems.is_empty(),
        "{} is not an exact copy of {}:\n{}",
        copy.display(),
        source.display(),
        problems.join("\n")
    );
}

/// Asserts that the snapshot tree `tree` is still exactly what `before` recorded.
#[track_caller]
fn assert_unchanged(tree: &Path, before: &BTreeMap<PathBuf, Entry>, after_what: &str) {
    let now = record(tree);
    let mut problems = Vec::new();
    for (path, was) in before {
        match now.get(path) {
            None => problems.push(format!("/{}: gone", path.display())),
            Some(is) if is != was => {
                problems.push(format!("/{}: was {was:?}\n    now {is:?}", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in now.keys().filter(|p| !before.contains_key(*p)) {
        problems.push(format!("/{}: appeared", path.display()));
    }
    assert!(
        problems.is_empty(),
        "the snapshot {} changed after {after_what}:\n{}",
        tree.display(),
        problems.join("\n")
    );
}

/// Whether `dir`'s file system clones files (`FICLONE`), asked of the kernel directly.
fn reflinks_work(dir: &Path) -> bool {
    let a = dir.join(".probe-a");
    let b = dir.join(".probe-b");
    std::fs::write(&a, b"probe").unwrap();
    let from = std::fs::File::open(&a).unwrap();
    let to = std::fs::File::create(&b).unwrap();
    let ok = rustix::fs::ioctl_ficlone(&to, &from).is_ok();
    drop((from, to));
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_file(&b).unwrap();
    ok
}

/// The source tree: a big file of distinct chunks, small files (one empty), nested
/// directories with their own modes, a symlink, a pair of hard links, extended attributes and
/// nanosecond mtimes.
fn build_source(src: &Path) {
    let mut t = TreeBuilder::new(src, 0x5eed);
    t.file("big.img", BIG_LEN as usize);
    t.file("notes.txt", 1000);
    t.file("meta.txt", 2000);
    t.file("touch.txt", 3000);
    t.file("empty", 0);
    t.file("gone.txt", 500);
    t.file("conf/app.ini", 300);
    t.file("conf/keys/k1", 64);
    t.file("drop/x1", 4000);
    t.file("drop/deeper/x2", 40);
    t.symlink("current", "conf/app.ini");
    t.file("vm/disk2.img", (16 * MIB) as usize);
    t.file("links/one", 700);
    std::fs::hard_link(src.join("links/one"), src.join("links/two")).unwrap();
    set_xattr(&src.join("meta.txt"), "user.tag", b"original");
    set_xattr(&src.join("conf/keys/k1"), "user.owner", b"ops team");
    t.mode("conf/keys/k1", 0o600);
    t.mode("conf/keys", 0o700);
    t.mode("meta.txt", 0o644);
    t.mtime("notes.txt", 1_700_000_000, 123_456_789);
    t.mtime("conf/app.ini", 1_700_000_100, 5);
    t.mtime("current", 1_700_000_200, 999_999_999);
    t.mtime("conf/keys", 1_700_000_300, 42);
}

/// Overwrites `len` bytes at `offset` with bytes made from `seed` and gives the file a new
/// mtime, as an application writing a block in the middle would.
fn scribble(path: &Path, offset: u64, len: usize, seed: u8) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ 0xa5)
        .collect();
    f.write_all_at(&data, offset).unwrap();
    set_mtime(path, 1_760_000_000 + i64::from(seed), 77);
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn ino(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .ino()
}

/// `cp -a`, for a copy of the original source that owes nothing to haul.
fn cp_a(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success(), "cp -a {} {}", from.display(), to.display());
}

#[track_caller]
fn assert_rsync_silent(src: &Path, dst: &Path) {
    let itemized = rsync_itemize(src, dst);
    assert!(
        itemized.is_empty(),
        "rsync -naicHAX --numeric-ids {}/ {}/ would change:\n{itemized}",
        src.display(),
        dst.display()
    );
}

/// The whole story on one file system: `root` is the server's root (on the file system under
/// test), `work` holds the source, the saved original and the restores. The snapshot must be
/// made with `method` ("hardlink" or "reflink").
fn snapshot_survives_every_kind_of_update(root: &Path, work: &Path, method: &str) {
    let src = work.join("src");
    let orig = work.join("orig");
    build_source(&src);
    cp_a(&src, &orig);
    let site = Site::start(root, work);
    let live = root.join("data");
    // The live tree keeps its own hard-link pair through every update.
    let live_pair_linked = |after: &str| {
        assert_eq!(
            ino(&live.join("links/one")),
            ino(&live.join("links/two")),
            "the live hard-link pair was split after {after}"
        );
    };

    site.push(&src, "data", &[]);
    assert_identical(&src, &live);

    let made = site.snapshot_create("data", "by test");
    let id = made["id"].as_str().expect("an id").to_owned();
    assert_eq!(made["label"], "by test", "{made}");
    assert_eq!(made["path"], "data", "{made}");
    assert_eq!(made["method"], method, "{made}");
    assert_eq!(made["complete"], true, "{made}");
    // big.img notes.txt meta.txt touch.txt empty gone.txt conf/app.ini conf/keys/k1
    // drop/x1 drop/deeper/x2 vm/disk2.img links/one links/two (each name of a link group
    // counts)
    assert_eq!(made["files"], 13, "{made}");
    let bytes = BIG_LEN + 1000 + 2000 + 3000 + 500 + 300 + 64 + 4000 + 40 + 16 * MIB + 2 * 700;
    assert_eq!(made["bytes"], bytes, "{made}");
    assert!(made["created"].as_u64().unwrap() > 1_600_000_000, "{made}");

    let tree = root.join(".haul/snapshots").join(&id).join("tree");
    assert_identical(&orig, &tree);
    assert_rsync_silent(&orig, &tree);
    // Shared as the method says: the very inode, or an inode of its own.
    for file in ["big.img", "notes.txt", "conf/keys/k1", "links/two"] {
        let (snap, live) = (ino(&tree.join(file)), ino(&live.join(file)));
        match method {
            "hardlink" => assert_eq!(snap, live, "{file}: not a hard link to the live file"),
            _ => assert_ne!(
                snap, live,
                "{file}: a reflink snapshot shares the live inode"
            ),
        }
    }
    let recorded = record(&tree);
    assert_eq!(recorded.len(), 21, "{recorded:#?}");
    assert_eq!(
        recorded[Path::new("meta.txt")].xattrs.get("user.tag"),
        Some(&"original".to_owned()),
        "the record misses extended attributes"
    );

    // (a) Changed files: a small one rewritten, the hard-link pair rewritten in place (both
    // names); metadata-only changes: a mode, an mtime, an xattr value with a new mtime, a
    // directory's mode.
    TreeBuilder::new(&src, 0xa).file("notes.txt", 1500);
    TreeBuilder::new(&src, 0xb).file("links/one", 700);
    std::fs::set_permissions(src.join("meta.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&src.join("touch.txt"), 1_750_000_000, 1);
    set_xattr(&src.join("conf/keys/k1"), "user.owner", b"someone else");
    set_mtime(&src.join("conf/keys/k1"), 1_750_000_000, 2);
    std::fs::set_permissions(src.join("conf"), std::fs::Permissions::from_mode(0o750)).unwrap();
    site.push(&src, "data", &[]);
    assert_identical(&src, &live);
    live_pair_linked("changed files");
    assert_unchanged(&tree, &recorded, "changed files and metadata-only changes");

    // (b) A few bytes in the middle of the big file: the one changed chunk is all that
    // travels, and the receiver may patch the file in place (never through a hard link).
    // And a mode-only change of the hard-link pair.
    let big_before = ino(&live.join("big.img"));
    scribble(&src.join("big.img"), 32 * MIB + 4097, 64, 1);
    std::fs::set_permissions(
        src.join("links/two"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let s = site.push(&src, "data", &[]);
    assert_eq!(
        s["chunks_sent"], 1,
        "only the changed chunk should travel: {s}"
    );
    assert_identical(&src, &live);
    live_pair_linked("a chunk patch and a chmod");
    let big_after = ino(&live.join("big.img"));
    match method {
        "hardlink" => assert_ne!(
            big_after,
            ino(&tree.join("big.img")),
            "the big file was patched in place through the snapshot's hard link"
        ),
        _ => assert_eq!(
            big_after, big_before,
            "a one-chunk change to a file with a reflink snapshot was not patched in place \
             (so copy-on-write under an in-place patch went untested)"
        ),
    }
    assert_unchanged(&tree, &recorded, "a few changed chunks of the big file");

    // Once more through the other branch of the chunk-hash cache (a patched file's record).
    scribble(&src.join("big.img"), 8 * MIB + 1, 64, 2);
    let s = site.push(&src, "data", &[]);
    assert_eq!(s["chunks_sent"], 1, "{s}");
    assert_identical(&src, &live);
    assert_unchanged(&tree, &recorded, "a second chunk patch");

    // (d) A change that only --checksum sees (same size, same mtime) in a file still shared
    // with the snapshot: found by hash, the changed chunk patched... never through a link.
    let disk2 = src.join("vm/disk2.img");
    let mtime = std::fs::symlink_metadata(&disk2).unwrap();
    let disk2_before = ino(&live.join("vm/disk2.img"));
    scribble(&disk2, 9 * MIB + 3, 16, 3);
    set_mtime(&disk2, mtime.mtime(), mtime.mtime_nsec());
    let s = site.push(&src, "data", &["--checksum"]);
    assert_eq!(s["chunks_sent"], 1, "{s}");
    assert_identical(&src, &live);
    let disk2_after = ino(&live.join("vm/disk2.img"));
    match method {
        "hardlink" => assert_ne!(
            disk2_after,
            ino(&tree.join("vm/disk2.img")),
            "a --checksum update patched a file in place through the snapshot's hard link"
        ),
        _ => assert_eq!(disk2_after, disk2_before, "not patched in place"),
    }
    assert_unchanged(&tree, &recorded, "a change only --checksum sees");

    // (c) A mirror: a file and a directory tree are gone from the source.
    std::fs::remove_file(src.join("gone.txt")).unwrap();
    std::fs::remove_dir_all(src.join("drop")).unwrap();
    let s = site.push(&src, "data", &["--delete"]);
    assert!(s["deleted_total"].as_u64().unwrap() >= 2, "{s}");
    assert_identical(&src, &live);
    assert!(!live.join("drop").exists() && !live.join("gone.txt").exists());
    live_pair_linked("--delete");
    assert_unchanged(&tree, &recorded, "a push with --delete");
    assert_identical(&orig, &tree);
    assert_rsync_silent(&orig, &tree);

    // A restore gives back exactly the original tree, and a part of it by its live path.
    let restored = work.join("restored");
    site.pull("data", &restored, Some(&id));
    assert_identical(&orig, &restored);
    assert_rsync_silent(&orig, &restored);
    let restored_conf = work.join("restored-conf");
    site.pull("data/conf", &restored_conf, Some(&id));
    assert_identical(&orig.join("conf"), &restored_conf);
    assert_rsync_silent(&orig.join("conf"), &restored_conf);
    // The live tree is still the new source: a pull from a snapshot reads only the snapshot.
    let live_copy = work.join("live-copy");
    site.pull("data", &live_copy, None);
    assert_identical(&src, &live_copy);
    // Restoring over that newer copy: changed chunks, metadata, and with --delete what the
    // snapshot did not have, until it is the original again. With --checksum, since (d) made
    // a change the quick check (size and mtime) cannot see.
    let url = site.server.url("data");
    let out = site.run(&[
        os("pull"),
        os("--json"),
        os("--delete"),
        os("--checksum"),
        os(&url),
        live_copy.as_os_str(),
        os("--snapshot"),
        os(&id),
    ]);
    assert_success(&out);
    assert_eq!(summary_of(&out)["files_failed"], 0);
    assert_identical(&orig, &live_copy);
    assert_rsync_silent(&orig, &live_copy);
    assert_unchanged(&tree, &recorded, "the restores");
    assert_identical(&src, &live);

    let list = site.snapshot_list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], id.as_str(), "{list:?}");
    assert_eq!(list[0]["label"], "by test", "{list:?}");
    assert_eq!(list[0]["path"], "data", "{list:?}");
    assert_eq!(list[0]["method"], method, "{list:?}");
    assert_eq!(list[0]["complete"], true, "{list:?}");

    site.snapshot_delete(&id);
    assert_eq!(site.snapshot_list(), Vec::<serde_json::Value>::new());
    assert!(
        !root.join(".haul/snapshots").join(&id).exists(),
        "the deleted snapshot's directory is still there"
    );
    // Deleting the snapshot took nothing from the live tree.
    assert_identical(&src, &live);
    assert_rsync_silent(&src, &live);
}

/// On the file system the temp directory is on (ext4 in CI: hard links).
#[test]
fn a_snapshot_on_the_temp_file_system_survives_updates_and_restores_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let method = if reflinks_work(&root) {
        "reflink"
    } else {
        "hardlink"
    };
    snapshot_survives_every_kind_of_update(&root, tmp.path(), method);
}

/// On a tmpfs: no reflinks, so hard links for sure.
#[test]
fn a_hard_link_snapshot_on_tmpfs_survives_updates_and_restores_the_original() {
    if !is_root() {
        eprintln!("note: not running as root, so no tmpfs can be mounted: skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("tmpfs"), "512m");
    let root = fs.path().join("root");
    std::fs::create_dir(&root).unwrap();
    assert!(!reflinks_work(&root), "tmpfs clones files now?");
    snapshot_survives_every_kind_of_update(&root, tmp.path(), "hardlink");
}

/// On XFS made with `-m reflink=1`: the snapshot's files are clones, and the live big file
/// is patched in place while the snapshot keeps the old extents.
#[test]
fn a_reflink_snapshot_on_xfs_survives_updates_and_restores_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(xfs) = XfsLoop::for_test(
        &tmp.path().join("xfs.img"),
        &tmp.path().join("xfs"),
        1 << 30,
    ) else {
        return;
    };
    let root = xfs.path().join("root");
    std::fs::create_dir(&root).unwrap();
    assert!(
        reflinks_work(&root),
        "XFS made with reflink=1 cannot clone a file"
    );
    snapshot_survives_every_kind_of_update(&root, tmp.path(), "reflink");
}

/// `haul snapshot create|list|delete` on a local receiver root, of a sub-tree and of all of it.
#[test]
fn local_snapshots_of_a_subtree_are_made_listed_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    let mut t = TreeBuilder::new(&local, 3);
    t.file("sub/a", 1234);
    t.file("sub/deep/b", 10);
    t.file("sub/deep/empty", 0);
    t.symlink("sub/link", "deep/b");
    t.mode("sub/deep", 0o750);
    t.mtime("sub/a", 1_700_000_000, 1);
    t.file("other/outside", 99);
    let cfg = tmp.path().join("cfg");
    let run = |args: &[&OsStr]| haul().run(&cfg, args);
    let method = if reflinks_work(&local) {
        "reflink"
    } else {
        "hardlink"
    };

    let out = run(&[
        os("snapshot"),
        os("create"),
        local.as_os_str(),
        os("--path"),
        os("sub"),
        os("--label"),
        os("x"),
        os("--json"),
    ]);
    assert_success(&out);
    let made = one_json(&out);
    let id = made["id"].as_str().expect("an id").to_owned();
    assert_eq!(made["label"], "x", "{made}");
    assert_eq!(made["path"], "sub", "{made}");
    assert_eq!(made["method"], method, "{made}");
    assert_eq!(made["files"], 3, "{made}");
    assert_eq!(made["bytes"], 1244, "{made}");
    assert_eq!(made["complete"], true, "{made}");
    let snapshots = local.join(".haul/snapshots");
    let tree = snapshots.join(&id).join("tree");
    assert_same_tree(&local.join("sub"), &tree);
    assert_rsync_silent(&local.join("sub"), &tree);
    assert!(!tree.join("outside").exists() && !tree.join("other").exists());

    // The whole root: everything but the store's own .haul (and so no snapshot in a snapshot).
    let out = run(&[
        os("snapshot"),
        os("create"),
        local.as_os_str(),
        os("--label"),
        os("all of it"),
        os("--json"),
    ]);
    assert_success(&out);
    let all = one_json(&out);
    let all_id = all["id"].as_str().unwrap().to_owned();
    assert_ne!(all_id, id);
    assert_eq!(all["path"], "", "{all}");
    assert_eq!(all["files"], 4, "{all}");
    let all_tree = snapshots.join(&all_id).join("tree");
    let mut names: Vec<_> = std::fs::read_dir(&all_tree)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["other", "sub"],
        "the whole-root snapshot holds more (.haul?)"
    );
    assert_same_tree(&local.join("sub"), &all_tree.join("sub"));
    assert_same_tree(&local.join("other"), &all_tree.join("other"));

    // Listed oldest first, with their labels, as JSON and for a person.
    let out = run(&[os("snapshot"), os("list"), os("--json"), local.as_os_str()]);
    assert_success(&out);
    let list = json_array(&out);
    let ids: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str(), all_id.as_str()], "{list:?}");
    assert_eq!(list[0]["label"], "x");
    assert_eq!(list[1]["label"], "all of it");
    let out = run(&[os("snapshot"), os("list"), local.as_os_str()]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{text}"));
    assert!(line.ends_with(" x") && line.contains("/sub"), "{line:?}");

    // Ids that are not snapshots are refused, and nothing is removed.
    for bad in ["../sub", "20000101T000000Z-000000"] {
        let out = run(&[os("snapshot"), os("delete"), local.as_os_str(), os(bad)]);
        assert!(!out.status.success(), "delete {bad:?} succeeded");
    }
    assert_same_tree(&local.join("sub"), &tree);

    for gone in [&id, &all_id] {
        let out = run(&[os("snapshot"), os("delete"), local.as_os_str(), os(gone)]);
        assert_success(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(gone.as_str()),
            "delete does not say what it deleted"
        );
        assert!(!snapshots.join(gone).exists(), "{gone} is still there");
    }
    let out = run(&[os("snapshot"), os("list"), os("--json"), local.as_os_str()]);
    assert_success(&out);
    assert!(json_array(&out).is_empty());
    let out = run(&[os("snapshot"), os("list"), local.as_os_str()]);
    assert_success(&out);
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The live files are all still there, untouched.
    assert_eq!(
        std::fs::read(local.join("other/outside")).unwrap().len(),
        99
    );
    assert_eq!(
        std::fs::symlink_metadata(local.join("sub/a"))
            .unwrap()
            .mtime(),
        1_700_000_000
    );
}

/// Snapshots through `--grant` tokens: confined to the grant (paths relative to it, invisible
/// and untouchable from another grant), made and deleted only with write scope, restored only
/// with read scope; never reachable, writable or removable as `.haul/...` paths.
#[test]
fn snapshots_are_confined_to_the_grant_and_its_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let root = p.join("root");
    let mut t = TreeBuilder::new(&p.join("src"), 9);
    t.file("a", 100);
    t.file("d/b", 200);
    t.symlink("d/l", "../a");
    std::fs::create_dir_all(root.join("po1")).unwrap();
    std::fs::create_dir_all(root.join("po2")).unwrap();
    let mut grants: Vec<OsString> = Vec::new();
    for (name, grant) in [
        ("rw", "po1"),
        ("r", "po1"),
        ("w", "po1"),
        ("other", "po2"),
        ("whole", ""),
    ] {
        let file = p.join(format!("{name}.token"));
        std::fs::write(&file, format!("token-{name}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let scope = match name {
            "r" => ",read",
            "w" => ",write",
            _ => "",
        };
        if grant.is_empty() {
            grants.extend(["--token-file".into(), file.into_os_string()]);
        } else {
            grants.extend([
                "--grant".into(),
                format!("{grant}={}{scope}", file.display()).into(),
            ]);
        }
    }
    let server = haul().serve_with(&root, &p.join("server-cfg"), &grants);
    let run = |token: &str, args: &[&OsStr]| {
        let mut all = args.to_vec();
        let file = p.join(format!("{token}.token"));
        all.extend([
            os("--fingerprint"),
            os(&server.fingerprint),
            os("--token-file"),
            file.as_os_str(),
        ]);
        haul().run(&p.join("client-cfg"), &all)
    };
    let url = |path: &str| OsString::from(server.url(path));
    let list = |token: &str| {
        let out = run(token, &[os("snapshot"), os("list"), os("--json"), &url("")]);
        assert_success(&out);
        json_array(&out)
    };

    let out = run("rw", &[os("push"), p.join("src").as_os_str(), &url("data")]);
    assert_success(&out);
    assert_same_tree(&p.join("src"), &root.join("po1/data"));

    // A read-only token may not make one; a write-only token may.
    let make = [os("snapshot"), os("create"), os("--json"), &url("data")];
    let out = run("r", &make);
    assert!(!out.status.success(), "a read-only token made a snapshot");
    assert!(list("rw").is_empty());
    let out = run(
        "w",
        &[&make[..], &[os("--label"), os("po1 before cutover")]].concat(),
    );
    assert_success(&out);
    let made = one_json(&out);
    let id = made["id"].as_str().unwrap().to_owned();
    // Named relative to the grant, stored relative to the root.
    assert_eq!(made["path"], "data", "{made}");
    let info =
        std::fs::read_to_string(root.join(".haul/snapshots").join(&id).join("info")).unwrap();
    assert!(info.lines().any(|l| l == "subtree=po1/data"), "{info}");
    let tree = root.join(".haul/snapshots").join(&id).join("tree");
    assert_same_tree(&p.join("src"), &tree);

    // Every po1 token sees it; po2's does not, and can neither restore nor delete it. The
    // whole-root token sees it by its path from the root.
    for token in ["rw", "r", "w"] {
        let l = list(token);
        assert_eq!(l.len(), 1, "{token}: {l:?}");
        assert_eq!(l[0]["id"], id.as_str());
        assert_eq!(l[0]["path"], "data");
        assert_eq!(l[0]["label"], "po1 before cutover");
    }
    assert!(list("other").is_empty(), "{:?}", list("other"));
    let whole = list("whole");
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0]["path"], "po1/data", "{whole:?}");
    let pull = |token: &str, path: &str, dest: &Path| {
        run(
            token,
            &[
                os("pull"),
                &url(path),
                dest.as_os_str(),
                os("--snapshot"),
                os(&id),
            ],
        )
    };
    let out = pull("other", "data", &p.join("by-other"));
    assert!(!out.status.success(), "po2's token restored po1's snapshot");
    assert!(!p.join("by-other").exists());
    let out = run("other", &[os("snapshot"), os("delete"), &url(""), os(&id)]);
    assert!(!out.status.success(), "po2's token deleted po1's snapshot");
    // A write-only token may not read it back; read-only and whole-root tokens may.
    let out = pull("w", "data", &p.join("by-w"));
    assert!(
        !out.status.success(),
        "a write-only token restored a snapshot"
    );
    let out = pull("r", "data", &p.join("by-r"));
    assert_success(&out);
    assert_same_tree(&p.join("src"), &p.join("by-r"));
    let out = pull("whole", "po1/data/d", &p.join("by-whole"));
    assert_success(&out);
    assert_same_tree(&p.join("src/d"), &p.join("by-whole"));
    // A path the snapshot does not hold.
    let out = pull("whole", "po2", &p.join("outside"));
    assert!(
        !out.status.success(),
        "restored a path outside the snapshot"
    );

    // Never as a path into .haul: not written, not read, not removed.
    let inside = format!(".haul/snapshots/{id}/tree");
    let before = record(&tree);
    let out = run(
        "whole",
        &[os("push"), p.join("src").as_os_str(), &url(&inside)],
    );
    assert!(
        !out.status.success(),
        "pushed into a snapshot through .haul"
    );
    let out = run(
        "whole",
        &[os("pull"), &url(&inside), p.join("raw").as_os_str()],
    );
    assert!(!out.status.success(), "pulled a snapshot through .haul");
    let out = run("whole", &[os("remote"), os("rm"), &url(&inside)]);
    assert!(!out.status.success(), "removed a snapshot through .haul");
    assert_unchanged(&tree, &before, "attempts through .haul");

    // Nothing to take a snapshot of: refused, and nothing left behind.
    for bad in ["nope", "data/a", "../po2"] {
        let out = run("rw", &[os("snapshot"), os("create"), &url(bad)]);
        assert!(!out.status.success(), "snapshot of {bad:?} succeeded");
    }
    assert_eq!(list("whole").len(), 1, "{:?}", list("whole"));
    assert_eq!(
        std::fs::read_dir(root.join(".haul/snapshots"))
            .unwrap()
            .count(),
        1
    );

    // The read-only token may not delete it; the write-only one may.
    let out = run("r", &[os("snapshot"), os("delete"), &url(""), os(&id)]);
    assert!(
        !out.status.success(),
        "a read-only token deleted a snapshot"
    );
    let out = run("w", &[os("snapshot"), os("delete"), &url(""), os(&id)]);
    assert_success(&out);
    assert!(list("whole").is_empty());
    assert_same_tree(&p.join("src"), &root.join("po1/data"));

    // Asking for one that is not there says how to find the ids, with a command that exists.
    let out = pull("rw", "data", &p.join("gone"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`haul snapshot list`") && !err.contains("haul remote snapshot"),
        "the hint names a command that does not exist: {err}"
    );
}

/// A snapshot whose making died (its `info` says `complete=0`, or there is no `info` at all)
/// is listed as incomplete, refused for a restore, and deleted by `haul snapshot delete`, as
/// the refusal itself says to do, over QUIC as on the local root.
#[test]
fn an_interrupted_snapshot_is_listed_refused_for_restore_and_can_be_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mut t = TreeBuilder::new(&root.join("data"), 4);
    t.file("a", 10);
    let site = Site::start(&root, tmp.path());
    let made = site.snapshot_create("data", "good");
    let good = made["id"].as_str().unwrap().to_owned();
    // What a creation killed after its first `info`, and one killed before it, leave behind.
    let snapshots = root.join(".haul/snapshots");
    let half = "20200101T000000Z-abcdef";
    std::fs::create_dir_all(snapshots.join(half).join("tree")).unwrap();
    std::fs::write(
        snapshots.join(half).join("info"),
        format!("id={half}\ncreated=1577836800\ncreated_nanos=0\nlabel=half\nsubtree=data\nfiles=0\ncomplete=0\n"),
    )
    .unwrap();
    let bare = "20200102T000000Z-000001";
    std::fs::create_dir(snapshots.join(bare)).unwrap();

    let list = site.snapshot_list();
    let by_id = |id: &str| {
        list.iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {list:?}"))
            .clone()
    };
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list[0]["id"], half, "not oldest first: {list:?}");
    assert_eq!(by_id(half)["complete"], false);
    assert_eq!(by_id(half)["label"], "half");
    assert_eq!(by_id(bare)["complete"], false);
    assert_eq!(by_id(&good)["complete"], true);

    for id in [half, bare] {
        let url = site.server.url("data");
        let dest = tmp.path().join(format!("restore-{id}"));
        let out = site.run(&[
            os("pull"),
            os(&url),
            dest.as_os_str(),
            os("--snapshot"),
            os(id),
        ]);
        assert!(!out.status.success(), "restored from the incomplete {id}");
        assert!(!dest.join("a").exists());
    }

    // Over QUIC...
    let url = site.server.url("");
    let out = site.run(&[os("snapshot"), os("delete"), os(&url), os(half)]);
    assert_success(&out);
    assert!(!snapshots.join(half).exists());
    // ... and on the local root.
    let out = haul().run(
        &tmp.path().join("local-cfg"),
        &[os("snapshot"), os("delete"), root.as_os_str(), os(bare)],
    );
    assert_success(&out);
    assert!(!snapshots.join(bare).exists());
    let list = site.snapshot_list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], good.as_str());
}

/// `haul copy SRC ROOT/sub` after `haul snapshot create ROOT --path sub`: the copy's receiver
/// root is ROOT/sub, but the hard-link snapshot in ROOT/.haul still shares its inodes, so no
/// update may change a file's inode in place there either (mode, mtime, xattrs included).
#[test]
fn a_local_copy_into_a_snapshotted_subtree_leaves_the_snapshot_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let (src, local) = (p.join("src"), p.join("local"));
    let mut t = TreeBuilder::new(&src, 12);
    t.file("content.txt", 1000);
    t.file("mode.txt", 1000);
    t.file("mtime.txt", 1000);
    t.file("xattr.txt", 1000);
    t.file("big.img", (12 * MIB) as usize);
    t.mode("mode.txt", 0o644);
    set_xattr(&src.join("xattr.txt"), "user.v", b"1");
    let cfg = p.join("cfg");
    let copy = || {
        let out = haul().run(
            &cfg,
            &[
                os("copy"),
                os("--json"),
                src.as_os_str(),
                local.join("sub").as_os_str(),
            ],
        );
        assert_success(&out);
        assert_eq!(summary_of(&out)["files_failed"], 0);
    };
    std::fs::create_dir(&local).unwrap();
    copy();
    let out = haul().run(
        &cfg,
        &[
            os("snapshot"),
            os("create"),
            os("--json"),
            local.as_os_str(),
            os("--path"),
            os("sub"),
        ],
    );
    assert_success(&out);
    let made = one_json(&out);
    let tree = local
        .join(".haul/snapshots")
        .join(made["id"].as_str().unwrap())
        .join("tree");
    let recorded = record(&tree);
    let orig = p.join("orig");
    cp_a(&src, &orig);

    TreeBuilder::new(&src, 13).file("content.txt", 1000);
    std::fs::set_permissions(src.join("mode.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&src.join("mtime.txt"), 1_750_000_000, 3);
    set_xattr(&src.join("xattr.txt"), "user.v", b"2");
    set_mtime(&src.join("xattr.txt"), 1_750_000_000, 4);
    scribble(&src.join("big.img"), 5 * MIB, 32, 9);
    copy();
    assert_identical(&src, &local.join("sub"));
    assert_unchanged(&tree, &recorded, "a haul copy into the snapshotted subtree");
    assert_identical(&orig, &tree);
}
