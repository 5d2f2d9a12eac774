//! Partials (chunk-level resume), existing files, rename-aside and throughput history.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use haul_proto::Meta;
use haul_store::{OpenedPartial, Partial, RelPath, Root, SourceIdentity, StoreError};

const CHUNK: u32 = 64 << 10;

fn rel(s: &str) -> RelPath {
    RelPath::parse(s.as_bytes()).unwrap()
}

fn identity(size: u64) -> SourceIdentity {
    SourceIdentity {
        size,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 42,
        chunk_size: CHUNK,
        stamp: 7,
    }
}

/// Deterministic, non-zero content for chunk `i` of a file of `size` bytes.
fn chunk(i: u64, size: u64) -> Vec<u8> {
    let start = i * u64::from(CHUNK);
    let len = (size - start).min(u64::from(CHUNK));
    (0..len).map(|j| ((start + j) % 251) as u8 | 1).collect()
}

fn hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Writes and records chunk `i`.
fn put(p: &Partial, i: u64, size: u64) -> [u8; 32] {
    let data = chunk(i, size);
    p.write_at(i * u64::from(CHUNK), &data).unwrap();
    let h = hash(&data);
    p.record(i, h, data.len() as u64).unwrap();
    h
}

fn sorted(mut v: Vec<(u64, [u8; 32])>) -> Vec<(u64, [u8; 32])> {
    v.sort();
    v
}

fn partial_entries(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join(".haul/partial"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn journal_path(root: &Path) -> PathBuf {
    let name = partial_entries(root)
        .into_iter()
        .find(|n| n.ends_with(".journal"))
        .unwrap();
    root.join(".haul/partial").join(name)
}

#[test]
fn partial_and_opened_partial_are_send_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Partial>();
    send_sync::<OpenedPartial>();
}

#[test]
fn checkpointed_chunks_resume_with_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let size = 4 * u64::from(CHUNK) + 1000;
    let target = rel("a/big.bin");
    let opened = root.open_partial(&target, identity(size)).unwrap();
    assert!(!opened.resumed && !opened.discarded_stale && opened.verified.is_empty());
    // Nothing beside the user's files: the partial lives in .haul/partial, sized and private.
    assert!(!dir.path().join("a").exists());
    let names = partial_entries(dir.path());
    assert_eq!(names.len(), 2, "{names:?}");
    let data_file = dir.path().join(".haul/partial").join(&names[0]);
    let st = fs::metadata(&data_file).unwrap();
    assert_eq!(st.len(), size);
    assert_eq!(st.permissions().mode() & 0o777, 0o600);
    assert_eq!(st.blocks(), 0, "a fresh partial is all holes");

    let p = opened.partial;
    let h0 = put(&p, 0, size);
    let h4 = put(&p, 4, size); // the short last chunk
    // Written by several threads at once through &self.
    std::thread::scope(|s| {
        s.spawn(|| put(&p, 2, size));
    });
    p.checkpoint().unwrap();
    drop(p);

    let again = root.open_partial(&target, identity(size)).unwrap();
    assert!(again.resumed && !again.discarded_stale);
    let h2 = hash(&chunk(2, size));
    assert_eq!(sorted(again.verified), vec![(0, h0), (2, h2), (4, h4)]);
    for i in [0, 2, 4] {
        let want = chunk(i, size);
        let mut back = vec![0u8; want.len()];
        again
            .partial
            .read_at(i * u64::from(CHUNK), &mut back)
            .unwrap();
        assert_eq!(back, want, "chunk {i}");
    }
    // Reading past the end is an error, not a short read.
    let mut buf = [0u8; 2000];
    assert!(again.partial.read_at(size - 1000, &mut buf).is_err());
}

#[test]
fn a_changed_source_discards_the_partial() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let size = 3 * u64::from(CHUNK);
    let target = rel("f");
    let p = root.open_partial(&target, identity(size)).unwrap().partial;
    put(&p, 1, size);
    p.checkpoint().unwrap();
    drop(p);

    let newer = SourceIdentity {
        mtime_sec: 1_700_000_001,
        ..identity(size)
    };
    let opened = root.open_partial(&target, newer).unwrap();
    assert!(opened.discarded_stale && !opened.resumed);
    assert!(opened.verified.is_empty());
    let mut back = vec![0xFFu8; CHUNK as usize];
    opened.partial.read_at(u64::from(CHUNK), &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0), "the old data is gone");
    put(&opened.partial, 0, size);
    drop(opened);

    // A different size (and a different chunk size) is stale too; the same identity resumes.
    let grown = identity(size + 1);
    let opened = root.open_partial(&target, grown).unwrap();
    assert!(opened.discarded_stale && opened.verified.is_empty());
    assert_eq!(
        fs::metadata(journal_path(dir.path()).with_extension("data"))
            .unwrap()
            .len(),
        size + 1
    );
    drop(opened);
    let rechunked = SourceIdentity {
        chunk_size: CHUNK * 2,
        ..grown
    };
    assert!(
        root.open_partial(&target, rechunked)
            .unwrap()
            .discarded_stale
    );
    let same = root.open_partial(&target, rechunked).unwrap();
    assert!(same.resumed && !same.discarded_stale);
}

#[test]
fn a_garbage_journal_tail_is_ignored_and_appending_continues() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let size = 5 * u64::from(CHUNK);
    let target = rel("x/y");
    let p = root.open_partial(&target, identity(size)).unwrap().partial;
    let h0 = put(&p, 0, size);
    let h1 = put(&p, 1, size);
    p.checkpoint().unwrap();
    drop(p);

    // A power cut mid-append: a torn record, then garbage.
    let journal = journal_path(dir.path());
    let good_len = fs::metadata(&journal).unwrap().len();
    let mut f = fs::OpenOptions::new().append(true).open(&journal).unwrap();
    f.write_all(&[0xAB; 77]).unwrap();
    drop(f);

    let opened = root.open_partial(&target, identity(size)).unwrap();
    assert!(opened.resumed && !opened.discarded_stale);
    assert_eq!(sorted(opened.verified), vec![(0, h0), (1, h1)]);
    assert_eq!(
        fs::metadata(&journal).unwrap().len(),
        good_len,
        "the tail was cut off"
    );
    let h3 = put(&opened.partial, 3, size);
    opened.partial.checkpoint().unwrap();
    drop(opened.partial);

    let opened = root.open_partial(&target, identity(size)).unwrap();
    assert_eq!(sorted(opened.verified), vec![(0, h0), (1, h1), (3, h3)]);
}

#[test]
fn a_corrupt_header_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let size = 2 * u64::from(CHUNK);
    let p = root
        .open_partial(&rel("h"), identity(size))
        .unwrap()
        .partial;
    put(&p, 0, size);
    drop(p);
    let journal = journal_path(dir.path());
    let mut bytes = fs::read(&journal).unwrap();
    bytes[20] ^= 1;
    fs::write(&journal, bytes).unwrap();
    let opened = root.open_partial(&rel("h"), identity(size)).unwrap();
    assert!(opened.discarded_stale && opened.verified.is_empty());
}

#[test]
fn drop_checkpoints_and_the_last_record_of_an_index_wins() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let size = 2 * u64::from(CHUNK);
    let p = root
        .open_partial(&rel("d"), identity(size))
        .unwrap()
        .partial;
    p.record(0, [1; 32], 10).unwrap();
    p.checkpoint().unwrap();
    p.record(0, [2; 32], 10).unwrap();
    p.record(1, [3; 32], 10).unwrap();
    // A chunk index past the end is a caller bug.
    assert!(p.record(2, [4; 32], 10).is_err());
    drop(p); // no explicit checkpoint
    let opened = root.open_partial(&rel("d"), identity(size)).unwrap();
    assert_eq!(sorted(opened.verified), vec![(0, [2; 32]), (1, [3; 32])]);
}

#[test]
fn a_second_open_of_the_same_destination_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let first = root.open_partial(&rel("sub/f"), identity(100)).unwrap();
    let err = root.open_partial(&rel("sub/f"), identity(100)).unwrap_err();
    assert!(
        matches!(&err, StoreError::Busy { path } if path == &dir.path().join("sub/f")),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("another haul receiver is writing"),
        "{err}"
    );
    // The key is the path from the *top* root, whichever sub-root asks.
    let sub = root.subdir(&rel("sub")).unwrap();
    assert!(matches!(
        sub.open_partial(&rel("f"), identity(100)),
        Err(StoreError::Busy { .. })
    ));
    // Another destination is independent; after the holder goes, the lock is free.
    assert!(root.open_partial(&rel("sub/g"), identity(100)).is_ok());
    drop(first);
    assert!(sub.open_partial(&rel("f"), identity(100)).unwrap().resumed);
}

#[test]
fn install_puts_content_mode_and_mtime_in_place_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let size = 2 * u64::from(CHUNK) + 5;
    let target = rel("out/file");
    root.create_dir_all(&rel("out")).unwrap();
    fs::write(dir.path().join("out/file"), b"old").unwrap();
    let p = root.open_partial(&target, identity(size)).unwrap().partial;
    for i in 0..3 {
        put(&p, i, size);
    }
    let meta = Meta {
        mode: 0o4640,
        mtime_sec: 1_600_000_000,
        mtime_nsec: 123_456_789,
    };
    p.install(&root, &target, &meta.into()).unwrap();
    let want: Vec<u8> = (0..3).flat_map(|i| chunk(i, size)).collect();
    assert_eq!(fs::read(dir.path().join("out/file")).unwrap(), want);
    let st = fs::metadata(dir.path().join("out/file")).unwrap();
    assert_eq!(st.mode() & 0o7777, 0o640, "setuid dropped");
    assert_eq!((st.mtime(), st.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert!(partial_entries(dir.path()).is_empty());

    // A directory in the way is refused and the partial is kept for the next run.
    fs::create_dir(dir.path().join("out/dir")).unwrap();
    let p = root
        .open_partial(&rel("out/dir"), identity(10))
        .unwrap()
        .partial;
    let err = p.install(&root, &rel("out/dir"), &meta.into()).unwrap_err();
    assert!(matches!(err, StoreError::IsADirectory { .. }), "{err:?}");
    assert_eq!(partial_entries(dir.path()).len(), 2);
    // Discard removes both.
    let p = root.open_partial(&rel("out/dir"), identity(10)).unwrap();
    assert!(p.resumed);
    p.partial.discard().unwrap();
    assert!(partial_entries(dir.path()).is_empty());
}

#[test]
fn copy_from_an_existing_file_and_open_existing_rules() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let old: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(dir.path().join("f"), &old).unwrap();
    fs::set_permissions(dir.path().join("f"), fs::Permissions::from_mode(0o640)).unwrap();
    let existing = root.open_existing(&rel("f")).unwrap().unwrap();
    assert_eq!(existing.size, old.len() as u64);
    assert_eq!(existing.mode, 0o640);
    let st = fs::metadata(dir.path().join("f")).unwrap();
    assert_eq!(existing.mtime_sec, st.mtime());
    assert_eq!(i64::from(existing.mtime_nsec), st.mtime_nsec());

    let size = 4 * u64::from(CHUNK);
    let p = root
        .open_partial(&rel("f"), identity(size))
        .unwrap()
        .partial;
    let (off, len) = (u64::from(CHUNK), 2 * u64::from(CHUNK) + 17);
    assert_eq!(p.copy_from(&existing.file, off, len).unwrap(), len);
    let mut back = vec![0u8; size as usize];
    p.read_at(0, &mut back).unwrap();
    let (o, e) = (off as usize, (off + len) as usize);
    assert_eq!(&back[o..e], &old[o..e]);
    assert!(back[..o].iter().chain(&back[e..]).all(|&b| b == 0));
    // A range the source does not hold, or past the partial's end, is an error.
    assert!(
        p.copy_from(&existing.file, 3 * u64::from(CHUNK), 10_000)
            .is_err()
    );
    assert!(p.copy_from(&existing.file, size - 10, 11).is_err());

    // After a copy, zeros written over the range really replace the copied bytes.
    p.write_at(off, &vec![0u8; CHUNK as usize]).unwrap();
    let mut back = vec![0xFFu8; CHUNK as usize];
    p.read_at(off, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));

    // Only a regular file is opened; nothing is followed.
    fs::create_dir(dir.path().join("d")).unwrap();
    std::os::unix::fs::symlink("f", dir.path().join("link")).unwrap();
    for name in ["d", "link", "missing", "missing/deeper"] {
        assert!(root.open_existing(&rel(name)).unwrap().is_none(), "{name}");
    }
    // A symlink on the way is refused, as everywhere else.
    let err = root.open_existing(&rel("link/x")).unwrap_err();
    assert!(matches!(err, StoreError::SymlinkInPath { .. }), "{err:?}");
}

#[test]
fn a_resumed_partial_clears_unverified_bytes_under_zero_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let size = 2 * u64::from(CHUNK);
    let p = root
        .open_partial(&rel("z"), identity(size))
        .unwrap()
        .partial;
    // Written but never recorded: the process dies before the chunk verified.
    p.write_at(u64::from(CHUNK), &vec![0x77; CHUNK as usize])
        .unwrap();
    drop(p);
    let opened = root.open_partial(&rel("z"), identity(size)).unwrap();
    assert!(opened.resumed && opened.verified.is_empty());
    // The source's chunk 1 is zeros.
    opened
        .partial
        .write_at(u64::from(CHUNK), &vec![0u8; CHUNK as usize])
        .unwrap();
    let mut back = vec![0xFFu8; CHUNK as usize];
    opened.partial.read_at(u64::from(CHUNK), &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
}

#[test]
fn set_file_meta_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    fs::write(dir.path().join("f"), b"same").unwrap();
    let ino = fs::metadata(dir.path().join("f")).unwrap().ino();
    let meta = Meta {
        mode: 0o2604,
        mtime_sec: 1_500_000_000,
        mtime_nsec: 7,
    };
    root.set_file_meta(&rel("f"), &meta.into()).unwrap();
    let st = fs::metadata(dir.path().join("f")).unwrap();
    assert_eq!((st.ino(), st.mode() & 0o7777), (ino, 0o604));
    assert_eq!((st.mtime(), st.mtime_nsec()), (1_500_000_000, 7));
    // A symlink is not followed: its target keeps its metadata.
    std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
    let other = Meta {
        mode: 0o600,
        ..meta
    };
    assert!(root.set_file_meta(&rel("l"), &other.into()).is_err());
    assert!(root.set_file_meta(&rel("missing"), &other.into()).is_err());
    assert_eq!(
        fs::metadata(dir.path().join("f")).unwrap().mode() & 0o777,
        0o604
    );
}

#[test]
fn rename_aside_numbers_copies_and_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let po = rel("mail/po");
    assert_eq!(root.rename_aside(&po).unwrap(), None);
    assert!(root.list_aside(&po).unwrap().is_empty());

    root.create_dir_all(&rel("mail/po/db")).unwrap();
    fs::write(dir.path().join("mail/po/db/first"), b"1").unwrap();
    assert_eq!(root.rename_aside(&po).unwrap(), Some(rel("mail/po.1")));
    assert!(!dir.path().join("mail/po").exists());
    // The cached fds of the moved tree no longer answer for its old name.
    root.create_dir_all(&rel("mail/po/db")).unwrap();
    assert_eq!(
        fs::read_dir(dir.path().join("mail/po/db")).unwrap().count(),
        0
    );
    assert!(dir.path().join("mail/po.1/db/first").exists());

    fs::write(dir.path().join("mail/po/db/second"), b"2").unwrap();
    assert_eq!(root.rename_aside(&po).unwrap(), Some(rel("mail/po.2")));
    assert!(dir.path().join("mail/po.2/db/second").exists());
    // Lookalikes are not aside copies; a file or symlink is renamed like a directory.
    for other in ["po.x", "po.", "po.1b", "pox.3"] {
        fs::write(dir.path().join("mail").join(other), b"").unwrap();
    }
    std::os::unix::fs::symlink("/", dir.path().join("mail/po")).unwrap();
    assert_eq!(root.rename_aside(&po).unwrap(), Some(rel("mail/po.3")));
    assert!(
        fs::symlink_metadata(dir.path().join("mail/po.3"))
            .unwrap()
            .is_symlink()
    );
    fs::rename(dir.path().join("mail/po.3"), dir.path().join("mail/po.10")).unwrap();
    assert_eq!(
        root.list_aside(&po).unwrap(),
        vec![rel("mail/po.1"), rel("mail/po.2"), rel("mail/po.10")]
    );
}

#[test]
fn throughput_history_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    assert!(root.throughput_history(5).unwrap().is_empty());
    root.record_throughput(1000, 1.5).unwrap();
    root.record_throughput(2_000_000_000_000, 3600.25).unwrap();
    // A sub-root writes the top root's history.
    let sub = root.subdir(&rel("s")).unwrap();
    sub.record_throughput(7, 0.0).unwrap();
    assert!(root.record_throughput(1, f64::NAN).is_err());
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(".haul/history"))
        .unwrap();
    f.write_all(b"garbage line\n").unwrap();
    drop(f);
    root.record_throughput(9, 2.0).unwrap();
    assert_eq!(
        root.throughput_history(10).unwrap(),
        vec![
            (1000, 1.5),
            (2_000_000_000_000, 3600.25),
            (7, 0.0),
            (9, 2.0)
        ]
    );
    assert_eq!(sub.throughput_history(2).unwrap(), vec![(7, 0.0), (9, 2.0)]);
    let text = fs::read_to_string(dir.path().join(".haul/history")).unwrap();
    let first: Vec<&str> = text.lines().next().unwrap().split(' ').collect();
    assert_eq!(first[1..], ["1000", "1.5"]);
    assert!(first[0].parse::<u64>().unwrap() > 1_600_000_000);
}

#[test]
fn sweep_staging_leaves_partials_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let size = u64::from(CHUNK);
    let p = root
        .open_partial(&rel("keep"), identity(size))
        .unwrap()
        .partial;
    let h = put(&p, 0, size);
    drop(p);
    // A staging leftover of a dead pid beside it is swept.
    fs::write(dir.path().join(".haul/staging/4194305-0"), b"x").unwrap();
    assert_eq!(root.sweep_staging().unwrap(), 1);
    assert_eq!(partial_entries(dir.path()).len(), 2);
    let opened = root.open_partial(&rel("keep"), identity(size)).unwrap();
    assert_eq!(opened.verified, vec![(0, h)]);
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mount> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("partial: not root, cannot mount a tmpfs; skipping");
        return None;
    }
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status();
    match status {
        Ok(s) if s.success() => Some(Mount(dir.to_path_buf())),
        other => {
            eprintln!("partial: mount -t tmpfs failed ({other:?}); skipping");
            None
        }
    }
}

#[test]
fn a_full_disk_pauses_and_a_larger_one_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_tmpfs(dir.path(), "1m") else {
        return;
    };
    let size = 24 * u64::from(CHUNK); // 1.5 MiB on a 1 MiB file system
    let target = rel("big");
    let root = Root::open(dir.path()).unwrap();
    let p = root.open_partial(&target, identity(size)).unwrap().partial;
    let mut hashes = Vec::new();
    for i in 0..4 {
        hashes.push((i, put(&p, i, size)));
    }
    p.checkpoint().unwrap();
    let err = (4..24)
        .find_map(|i| p.write_at(i * u64::from(CHUNK), &chunk(i, size)).err())
        .unwrap();
    assert!(err.is_no_space(), "{err:?}");
    assert!(matches!(&err, StoreError::NoSpace { path } if path == dir.path()));
    drop(p);
    drop(root);

    let status = Command::new("mount")
        .args(["-o", "remount,size=4m"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let root = Root::open(dir.path()).unwrap();
    let opened = root.open_partial(&target, identity(size)).unwrap();
    assert!(opened.resumed);
    assert_eq!(sorted(opened.verified), hashes);
    let p = opened.partial;
    for i in 4..24 {
        put(&p, i, size);
    }
    let meta = Meta {
        mode: 0o644,
        mtime_sec: 1,
        mtime_nsec: 0,
    };
    p.install(&root, &target, &meta.into()).unwrap();
    let want: Vec<u8> = (0..24).flat_map(|i| chunk(i, size)).collect();
    assert!(fs::read(dir.path().join("big")).unwrap() == want);
    drop(root);
}
