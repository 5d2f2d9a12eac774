//! The `--delete` listing walk: every directory's names, no more.

use std::ffi::OsStr;
use std::fs::{self, Permissions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use haul_manifest::{DirNames, Filter, ScanError, ScanOptions, walk_names};

fn dir_names(rel: &str, names: &[&[u8]]) -> DirNames {
    DirNames {
        rel: rel.as_bytes().to_vec(),
        names: names.iter().map(|n| n.to_vec()).collect(),
    }
}

fn walk(root: &Path, opts: &ScanOptions) -> Vec<DirNames> {
    walk_names(root, opts)
        .map(|d| d.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// A tree with nested directories, a symlink to a directory, odd names.
fn build(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("a/empty")).unwrap();
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(root.join("a/b/c/deep"), b"x").unwrap();
    fs::write(root.join("a/b/f.tmp"), b"x").unwrap();
    fs::write(root.join("a/z"), b"x").unwrap();
    fs::write(root.join("top"), b"x").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"bad\xff")), b"x").unwrap();
    symlink("a", root.join("link-to-a")).unwrap();
    for i in 0..150 {
        fs::write(root.join(format!("d/f{i:03}")), b"x").unwrap();
    }
}

#[test]
fn every_directory_with_its_names_in_order_and_symlinks_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    build(&root);
    let got = walk(&root, &ScanOptions::default());
    let wide: Vec<Vec<u8>> = (0..150).map(|i| format!("f{i:03}").into_bytes()).collect();
    let wide: Vec<&[u8]> = wide.iter().map(Vec::as_slice).collect();
    assert_eq!(
        got,
        vec![
            dir_names("", &[b"a", b"bad\xff", b"d", b"link-to-a", b"top"]),
            dir_names("a", &[b"b", b"empty", b"z"]),
            dir_names("a/b", &[b"c", b"f.tmp"]),
            dir_names("a/b/c", &[b"deep"]),
            dir_names("a/empty", &[]),
            dir_names("d", &wide),
        ]
    );
    // The root's trailing slash changes nothing.
    let mut slash = root.clone().into_os_string();
    slash.push("/");
    assert_eq!(walk(Path::new(&slash), &ScanOptions::default()), got);
}

#[test]
fn filtered_names_are_not_listed_and_excluded_directories_not_walked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    build(&root);
    let filter = Filter::new()
        .exclude("*.tmp")
        .unwrap()
        .exclude("/d/")
        .unwrap()
        .exclude("c/")
        .unwrap();
    let opts = ScanOptions {
        filter: Some(Arc::new(filter)),
        ..ScanOptions::default()
    };
    assert_eq!(
        walk(&root, &opts),
        vec![
            dir_names("", &[b"a", b"bad\xff", b"link-to-a", b"top"]),
            dir_names("a", &[b"b", b"empty", b"z"]),
            dir_names("a/b", &[]),
            dir_names("a/empty", &[]),
        ]
    );
}

#[test]
fn a_root_that_is_not_a_directory_yields_nothing_and_a_missing_one_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, b"x").unwrap();
    assert_eq!(walk_names(&file, &ScanOptions::default()).count(), 0);
    symlink(dir.path(), dir.path().join("l")).unwrap();
    assert_eq!(
        walk_names(&dir.path().join("l"), &ScanOptions::default()).count(),
        0
    );
    let missing: Vec<_> =
        walk_names(&dir.path().join("missing"), &ScanOptions::default()).collect();
    assert_eq!(missing.len(), 1);
    assert!(
        matches!(&missing[0], Err(ScanError::Io { op: "stat", .. })),
        "{missing:?}"
    );
}

/// What the walk of `root` yields, one line per item.
fn describe(root: &Path) -> Vec<String> {
    walk_names(root, &ScanOptions::default())
        .map(|item| match item {
            Ok(d) => format!("ok {} {}", String::from_utf8_lossy(&d.rel), d.names.len()),
            Err(ScanError::Io { op, path, .. }) => {
                format!("err {op} {}", path.strip_prefix(root).unwrap().display())
            }
            Err(e) => format!("err {e}"),
        })
        .collect()
}

#[test]
fn an_unreadable_directory_is_an_error_and_the_walk_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("src");
    fs::create_dir_all(root.join("a/locked/inner")).unwrap();
    fs::create_dir_all(root.join("b")).unwrap();
    fs::write(root.join("b/f"), b"x").unwrap();
    fs::set_permissions(root.join("a/locked"), Permissions::from_mode(0o000)).unwrap();
    let want = ["ok  2", "ok a 1", "err read directory a/locked", "ok b 1"];
    let got = if rustix::process::geteuid().is_root() {
        // Root reads anything: walk as nobody.
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "walk_as_nobody", "--nocapture"])
            .env("HAUL_WALK_ROOT", &root)
            .output()
            .expect("setpriv (util-linux) runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .filter_map(|l| l.strip_prefix("walked: "))
            .map(str::to_owned)
            .collect()
    } else {
        describe(&root)
    };
    fs::set_permissions(root.join("a/locked"), Permissions::from_mode(0o755)).unwrap();
    assert_eq!(got, want);
}

/// Run by the test above as an unprivileged user, with `HAUL_WALK_ROOT` set; on its own (as
/// part of the suite) it has nothing to walk and does nothing.
#[test]
fn walk_as_nobody() {
    let Some(root) = std::env::var_os("HAUL_WALK_ROOT") else {
        return;
    };
    for line in describe(Path::new(&root)) {
        println!("walked: {line}");
    }
}
