//! Exact copies of real trees, end to end with the real binary: owners, hard links, xattrs and
//! ACLs, special files, nanosecond times; privilege only where the receiver grants it. The
//! standard is the one an administrator holds a copy to: `rsync -naicHAX --numeric-ids SRC/
//! DST/` prints nothing, an independent stat/xattr walk agrees, `du` agrees, and a re-run
//! sends nothing and changes nothing.
//!
//! These tests run as root (CI does): they make device nodes and files of other owners.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use haul_testing::fidelity::{build_fidelity_tree, compare_trees, du_bytes, rsync_itemize};
use haul_testing::{Haul, assert_success, summary_of};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Every entry below `dir` (not following links) with its ctime and inode: what a run that
/// "changes nothing" must leave as it was.
fn ctimes(dir: &Path) -> BTreeMap<PathBuf, (i64, i64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.file_name() == Some(OsStr::new(".haul")) && d == dir {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            out.insert(p.clone(), (m.ctime(), m.ctime_nsec(), m.ino()));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Asserts `dst` is an exact copy of `src` by all three independent checks.
#[track_caller]
fn assert_exact(src: &Path, dst: &Path) {
    let itemized = rsync_itemize(src, dst);
    assert!(
        itemized.trim().is_empty(),
        "rsync -naicHAX --numeric-ids finds differences:\n{itemized}"
    );
    let diffs = compare_trees(src, dst);
    assert!(diffs.is_empty(), "the trees differ:\n{}", diffs.join("\n"));
    assert_eq!(du_bytes(src), du_bytes(dst), "du of the copy differs");
}

#[test]
fn copy_of_a_fidelity_tree_is_exact_and_a_rerun_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    build_fidelity_tree(&src);
    let out = haul().run(
        &cfg,
        &[os("copy"), os("--json"), src.as_os_str(), dst.as_os_str()],
    );
    assert_success(&out);
    let summary = summary_of(&out);
    assert!(summary["hard_links"].as_u64().unwrap() >= 5, "{summary}");
    assert!(summary["specials"].as_u64().unwrap() >= 4, "{summary}");
    assert_eq!(summary["not_applied"]["owners"], 0, "{summary}");
    assert_exact(&src, &dst);

    // A re-run sends no file data and touches nothing: no inode replaced, no ctime moved.
    let before = ctimes(&dst);
    let out = haul().run(
        &cfg,
        &[os("copy"), os("--json"), src.as_os_str(), dst.as_os_str()],
    );
    assert_success(&out);
    let again = summary_of(&out);
    assert_eq!(again["bytes_sent"], 0, "{again}");
    assert_eq!(again["meta_only_changes"], 0, "{again}");
    let after = ctimes(&dst);
    let moved: Vec<_> = before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(moved.is_empty(), "a no-change re-run touched: {moved:?}");
    assert_exact(&src, &dst);
}

#[test]
fn metadata_only_changes_send_no_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    build_fidelity_tree(&src);
    assert_success(&haul().run(&cfg, &[os("copy"), src.as_os_str(), dst.as_os_str()]));
    // Change owner, mode and an attribute of files in the source, keeping data and mtime.
    let plain = find_plain_file(&src);
    let meta = std::fs::metadata(&plain).unwrap();
    let times = (meta.mtime(), meta.mtime_nsec());
    std::os::unix::fs::lchown(&plain, Some(4242), Some(4343)).unwrap();
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    rustix::fs::setxattr(
        &plain,
        "user.note",
        b"changed",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    set_mtime(&plain, times);
    let out = haul().run(
        &cfg,
        &[os("copy"), os("--json"), src.as_os_str(), dst.as_os_str()],
    );
    assert_success(&out);
    let summary = summary_of(&out);
    assert_eq!(summary["bytes_sent"], 0, "{summary}");
    assert!(
        summary["meta_only_changes"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert_exact(&src, &dst);
}

/// The largest regular file with one link and no attributes of its own.
fn find_plain_file(src: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file()
                && m.nlink() == 1
                && m.mode() & 0o7000 == 0
                && m.mode() & 0o400 != 0
                && rustix::fs::llistxattr(&p, &mut [0u8; 0]).unwrap_or(1) == 0
                && best.as_ref().is_none_or(|(s, _)| m.len() > *s)
            {
                best = Some((m.len(), p));
            }
        }
    }
    best.expect("a plain file in the fidelity tree").1
}

fn set_mtime(path: &Path, (sec, nsec): (i64, i64)) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

struct Remote {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    root: PathBuf,
    client_cfg: PathBuf,
    token: PathBuf,
    server: haul_testing::Server,
}

fn serve_fidelity(extra: &[&str]) -> Remote {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().to_path_buf();
    let src = p.join("src");
    build_fidelity_tree(&src);
    let root = p.join("root");
    std::fs::create_dir(&root).unwrap();
    let token = p.join("token");
    haul_testing::cmd::write_secret(&token, "fidelity-token\n");
    let mut args: Vec<std::ffi::OsString> = vec!["--token-file".into(), token.clone().into()];
    args.extend(extra.iter().map(Into::into));
    let server = haul().serve_with(&root, &p.join("server-cfg"), &args);
    Remote {
        _tmp: tmp,
        src,
        root,
        client_cfg: p.join("client-cfg"),
        token,
        server,
    }
}

fn push(r: &Remote, dest: &str, extra: &[&OsStr]) -> std::process::Output {
    let url = r.server.url(dest);
    let mut args = vec![
        os("push"),
        os("--json"),
        os("--fingerprint"),
        OsStr::new(&r.server.fingerprint),
        os("--token-file"),
        r.token.as_os_str(),
    ];
    args.extend_from_slice(extra);
    args.push(r.src.as_os_str());
    args.push(OsStr::new(&url));
    haul().run(&r.client_cfg, &args)
}

#[test]
fn push_to_a_privileged_grant_is_exact() {
    let r = serve_fidelity(&["--privileged"]);
    let out = push(&r, "po1", &[]);
    assert_success(&out);
    let dst = r.root.join("po1");
    assert_exact(&r.src, &dst);
    let out = push(&r, "po1", &[]);
    assert_success(&out);
    assert_eq!(summary_of(&out)["bytes_sent"], 0);
    assert_exact(&r.src, &dst);
}

#[test]
fn an_unprivileged_grant_plants_no_setuid_root_file_device_or_capability() {
    let r = serve_fidelity(&[]);
    let out = push(&r, "po1", &[]);
    assert_success(&out);
    let summary = summary_of(&out);
    let not_applied = &summary["not_applied"];
    assert!(not_applied["owners"].as_u64().unwrap() > 0, "{summary}");
    assert!(
        not_applied["special_bits"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(not_applied["devices"].as_u64().unwrap() >= 2, "{summary}");
    assert!(not_applied["xattrs"].as_u64().unwrap() > 0, "{summary}");
    // Nothing dangerous exists anywhere under the root.
    let mut stack = vec![r.root.join("po1")];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            seen += 1;
            let kind = m.mode() & 0o170000;
            assert!(
                kind != 0o020000 && kind != 0o060000,
                "a device node was created: {}",
                p.display()
            );
            if m.is_file() {
                assert_eq!(
                    m.mode() & 0o6000,
                    0,
                    "setuid/setgid kept on {}",
                    p.display()
                );
                assert_eq!(m.uid(), 0, "owner applied on {}", p.display());
                let mut buf = [0u8; 64];
                assert!(
                    rustix::fs::lgetxattr(&p, "security.capability", &mut buf).is_err(),
                    "a capability was set on {}",
                    p.display()
                );
            }
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    assert!(seen > 20, "the copy holds the tree ({seen} entries)");
}

#[test]
fn the_real_usr_share_tree_copies_exactly() {
    // A tree nobody here wrote: /usr/share (hard links, odd names, many small files). The
    // whole /usr is the benchmark script's job (benches/system_tree.sh).
    let src = Path::new("/usr/share/perl5");
    let src = if src.is_dir() {
        src
    } else {
        Path::new("/usr/share/doc")
    };
    let tmp = tempfile::tempdir().unwrap();
    let (dst, cfg) = (tmp.path().join("dst"), tmp.path().join("cfg"));
    assert_success(&haul().run(&cfg, &[os("copy"), src.as_os_str(), dst.as_os_str()]));
    let itemized = rsync_itemize(src, &dst);
    assert!(itemized.trim().is_empty(), "rsync finds:\n{itemized}");
    let diffs = compare_trees(src, &dst);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
