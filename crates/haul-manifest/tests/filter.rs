//! The filter's matching rules, rule files, lists of paths, its serialization, and what the
//! scan does with it.

use std::fs::{self, Permissions};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use haul_manifest::{Filter, FilterError, ScanOptions, scan_with};

/// A rule: `+ pattern` or `- pattern`.
fn filter(rules: &[&str]) -> Filter {
    let mut filter = Filter::new();
    for rule in rules {
        filter = match rule.split_at(2) {
            ("+ ", pattern) => filter.include(pattern),
            ("- ", pattern) => filter.exclude(pattern),
            _ => panic!("bad test rule {rule}"),
        }
        .unwrap_or_else(|e| panic!("{rule}: {e}"));
    }
    filter
}

const F: bool = false;
const D: bool = true;

/// (what it shows, rules, path, is a directory, included)
type Case = (
    &'static str,
    &'static [&'static str],
    &'static [u8],
    bool,
    bool,
);

const CASES: &[Case] = &[
    ("no rules: everything included", &[], b"a/b/c", F, true),
    (
        "floating name at the root",
        &["- *.tmp"],
        b"x.tmp",
        F,
        false,
    ),
    (
        "floating name deep down",
        &["- *.tmp"],
        b"a/b/x.tmp",
        F,
        false,
    ),
    (
        "floating matches the whole name only",
        &["- *.tmp"],
        b"a/x.tmp.keep",
        F,
        true,
    ),
    (
        "floating matches directories too",
        &["- build"],
        b"src/build",
        D,
        false,
    ),
    (
        "floating literal is a name, not a suffix",
        &["- build"],
        b"src/rebuild",
        D,
        true,
    ),
    (
        "anchored with a leading slash, at the root",
        &["- /tmp"],
        b"tmp",
        D,
        false,
    ),
    (
        "anchored with a leading slash, not deeper",
        &["- /tmp"],
        b"a/tmp",
        D,
        true,
    ),
    (
        "a slash inside anchors too",
        &["- a/*.db"],
        b"a/x.db",
        F,
        false,
    ),
    (
        "a slash inside anchors: not deeper",
        &["- a/*.db"],
        b"po/a/x.db",
        F,
        true,
    ),
    ("star never crosses a slash", &["- /a/*"], b"a/b/c", F, true),
    ("star matches one level", &["- /a/*"], b"a/b", D, false),
    (
        "question mark is one byte",
        &["- ?.txt"],
        b"d/x.txt",
        F,
        false,
    ),
    (
        "question mark is not two",
        &["- ?.txt"],
        b"d/xy.txt",
        F,
        true,
    ),
    (
        "double star: everything under",
        &["- /a/**"],
        b"a/b/c/d",
        F,
        false,
    ),
    (
        "double star: not the directory itself",
        &["- /a/**"],
        b"a",
        D,
        true,
    ),
    (
        "leading double star: any depth",
        &["- **/cache/*.bin"],
        b"x/y/cache/z.bin",
        F,
        false,
    ),
    (
        "leading double star: zero depth",
        &["- **/cache/*.bin"],
        b"cache/z.bin",
        F,
        false,
    ),
    (
        "inner double star: zero levels",
        &["- a/**/z"],
        b"a/z",
        F,
        false,
    ),
    (
        "inner double star: several levels",
        &["- a/**/z"],
        b"a/b/c/z",
        F,
        false,
    ),
    ("class", &["- file[12]"], b"file2", F, false),
    ("class: other byte", &["- file[12]"], b"file3", F, true),
    ("negated class", &["- file[!12]"], b"file3", F, false),
    ("alternatives", &["- *.{o,a}"], b"lib/x.a", F, false),
    ("escaped star is literal", &["- a\\*"], b"a*", F, false),
    (
        "escaped star is not a wildcard",
        &["- a\\*"],
        b"ab",
        F,
        true,
    ),
    (
        "directory-only rule excludes a directory",
        &["- cache/"],
        b"x/cache",
        D,
        false,
    ),
    (
        "directory-only rule skips a file",
        &["- cache/"],
        b"x/cache",
        F,
        true,
    ),
    (
        "a skipped directory-only rule lets a later rule decide",
        &["+ cache/", "- cache"],
        b"cache",
        F,
        false,
    ),
    (
        "first match wins: include first",
        &["+ keep.log", "- *.log"],
        b"d/keep.log",
        F,
        true,
    ),
    (
        "first match wins: other names excluded",
        &["+ keep.log", "- *.log"],
        b"d/x.log",
        F,
        false,
    ),
    (
        "first match wins: exclude first",
        &["- *.log", "+ keep.log"],
        b"keep.log",
        F,
        false,
    ),
    (
        "only these: include then exclude all",
        &["+ *.c", "+ */", "- *"],
        b"src/a.c",
        F,
        true,
    ),
    (
        "only these: directories kept",
        &["+ *.c", "+ */", "- *"],
        b"src",
        D,
        true,
    ),
    (
        "only these: the rest excluded",
        &["+ *.c", "+ */", "- *"],
        b"src/a.h",
        F,
        false,
    ),
    (
        "a trailing slash and a leading one",
        &["- /var/"],
        b"var",
        D,
        false,
    ),
    (
        "a trailing slash and a leading one, file",
        &["- /var/"],
        b"var",
        F,
        true,
    ),
    (
        "non-UTF-8 name by a wildcard",
        &["- *.bin"],
        b"d/\xff\xfe.bin",
        F,
        false,
    ),
    (
        "non-UTF-8 name, one byte by ?",
        &["- a?"],
        b"a\xff",
        F,
        false,
    ),
    (
        "non-UTF-8 name, untouched by others",
        &["- *.bin"],
        b"d/\xff\xfe.txt",
        F,
        true,
    ),
];

#[test]
fn matching_table() {
    for &(what, rules, rel, is_dir, want) in CASES {
        let f = filter(rules);
        assert_eq!(
            f.decide(rel, is_dir),
            want,
            "{what}: {rules:?} on {:?} (dir: {is_dir})",
            String::from_utf8_lossy(rel)
        );
        assert_eq!(f.excludes(rel, is_dir), !want, "{what}");
        // The receiver's copy decides the same.
        let back = Filter::from_rules(&f.to_rules()).unwrap();
        assert_eq!(back.decide(rel, is_dir), want, "{what}, after a round trip");
    }
}

#[test]
fn non_utf8_bytes_in_a_pattern_match_themselves() {
    let f = Filter::new().exclude(b"/d/\xff*").unwrap();
    assert!(f.excludes(b"d/\xffa", false));
    assert!(f.excludes(b"d/\xff", false));
    assert!(!f.excludes(b"d/\xfea", false));
    assert!(!f.excludes(b"d/a", false));
    assert!(!f.excludes(b"x/d/\xffa", false));
    let back = Filter::from_rules(&f.to_rules()).unwrap();
    assert_eq!(back.to_rules(), vec![b"- /d/\xff*".to_vec()]);
    assert!(back.excludes(b"d/\xffa", false));
    assert!(!back.excludes(b"d/\xfea", false));
}

#[test]
fn an_included_entry_below_an_excluded_directory_is_not_transferred() {
    let f = filter(&["+ /a/b/keep", "- /a/"]);
    // On its own the entry is included ...
    assert!(f.decide(b"a/b/keep", false));
    // ... but its ancestor is excluded, so it never gets there.
    assert!(!f.transfers(b"a/b/keep", false));
    assert!(!f.decide(b"a", true));
    assert!(filter(&[]).transfers(b"x/y/z", false));
}

#[test]
fn bad_patterns_are_refused_naming_them() {
    for bad in ["", "/", "//", "a[b", "{x", "trailing\\"] {
        let err = Filter::new().exclude(bad).unwrap_err();
        assert!(matches!(err, FilterError::Pattern { .. }), "{bad}: {err}");
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "{bad}: {err}"
        );
    }
    for bad in ["x", "+x", "* a", ""] {
        let err = Filter::from_rules(&[bad]).unwrap_err();
        assert!(matches!(err, FilterError::Rule { .. }), "{bad}: {err}");
    }
    assert!(Filter::from_rules(&["- a["]).is_err());
}

#[test]
fn to_rules_and_from_rules_keep_every_rule_and_decision() {
    let f = filter(&["+ /keep/**", "- *.tmp", "- cache/", "+ a/b", "- /**"]);
    let rules = f.to_rules();
    assert_eq!(
        rules,
        vec![
            b"+ /keep/**".to_vec(),
            b"- *.tmp".to_vec(),
            b"- cache/".to_vec(),
            b"+ a/b".to_vec(),
            b"- /**".to_vec(),
        ]
    );
    let back = Filter::from_rules(&rules).unwrap();
    assert_eq!(back.to_rules(), rules);
    let probes: &[(&[u8], bool)] = &[
        (b"keep/x.tmp", F),
        (b"x.tmp", F),
        (b"cache", D),
        (b"cache", F),
        (b"a/b", F),
        (b"a", D),
        (b"z", F),
    ];
    for &(rel, is_dir) in probes {
        assert_eq!(f.decide(rel, is_dir), back.decide(rel, is_dir), "{rel:?}");
    }
    assert!(Filter::from_rules::<&[u8]>(&[]).unwrap().is_empty());
}

#[test]
fn exclude_from_reads_plus_and_minus_lines_and_skips_comments() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    fs::write(
        &rules,
        "# build output\n\n- *.o\n+ /keep/important.tmp\n*.tmp\r\n#- *.c\n+ trailing space \n",
    )
    .unwrap();
    let f = Filter::new().exclude_from(&rules).unwrap();
    assert_eq!(
        f.to_rules(),
        vec![
            b"- *.o".to_vec(),
            b"+ /keep/important.tmp".to_vec(),
            b"- *.tmp".to_vec(),
            b"+ trailing space ".to_vec(),
        ]
    );
    assert!(f.excludes(b"src/a.o", false));
    assert!(f.decide(b"keep/important.tmp", false));
    assert!(f.excludes(b"keep/other.tmp", false));
    assert!(f.decide(b"src/a.c", false), "a commented rule is no rule");

    fs::write(&rules, "- ok\n- bad[\n").unwrap();
    let err = Filter::new().exclude_from(&rules).unwrap_err();
    assert!(matches!(err, FilterError::Line { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("bad["), "{err}");

    let missing = dir.path().join("missing");
    let err = Filter::new().exclude_from(&missing).unwrap_err();
    assert!(matches!(err, FilterError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

/// A source tree for the `files_from` tests.
fn source(root: &Path) {
    for dir in ["a/b/c", "a/other", "d/e", "x"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    for file in [
        "a/b/c/f",
        "a/b/g",
        "a/other/h",
        "d/e/i",
        "d/j",
        "x/k",
        "top",
        "we*rd",
    ] {
        fs::write(root.join(file), b"x").unwrap();
    }
}

#[test]
fn files_from_restricts_to_the_listed_paths_and_their_ancestors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    source(&root);
    let list = dir.path().join("list");
    fs::write(&list, "# what to copy\n./a/b/g\n\n/d/\ntop\nwe*rd\n").unwrap();
    let f = Filter::new().files_from(&root, &list).unwrap();
    let cases: &[(&[u8], bool, bool)] = &[
        // A listed file, and its ancestor directories alone.
        (b"a/b/g", F, true),
        (b"a", D, true),
        (b"a/b", D, true),
        (b"a/b/c", D, false),
        (b"a/other", D, false),
        // A listed directory with everything under it.
        (b"d", D, true),
        (b"d/e", D, true),
        (b"d/e/i", F, true),
        (b"d/j", F, true),
        (b"top", F, true),
        // A name with a glob character is matched literally.
        (b"we*rd", F, true),
        (b"weird", F, false),
        (b"x", D, false),
        (b"x/k", F, false),
    ];
    for &(rel, is_dir, want) in cases {
        assert_eq!(
            f.decide(rel, is_dir),
            want,
            "{:?}",
            String::from_utf8_lossy(rel)
        );
    }
    let back = Filter::from_rules(&f.to_rules()).unwrap();
    for &(rel, is_dir, want) in cases {
        assert_eq!(back.decide(rel, is_dir), want, "round trip {rel:?}");
    }
    let rules = f.to_rules();
    assert!(rules.contains(&b"+ /a/".to_vec()), "{rules:?}");
    assert!(rules.contains(&b"+ /d/**".to_vec()), "{rules:?}");
    assert_eq!(rules.last().unwrap(), b"- /**");

    // Exclusions added first still apply inside a listed directory.
    let g = Filter::new()
        .exclude("j")
        .unwrap()
        .files_from(&root, &list)
        .unwrap();
    assert!(g.excludes(b"d/j", false));
    assert!(g.decide(b"d/e/i", false));
}

#[test]
fn files_from_refuses_missing_paths_and_dot_dot() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    source(&root);
    let list = dir.path().join("list");

    fs::write(&list, "top\na/nope\n").unwrap();
    let err = Filter::new().files_from(&root, &list).unwrap_err();
    assert!(matches!(err, FilterError::Line { line: 2, .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("a/nope") && text.contains("does not exist"),
        "{text}"
    );

    fs::write(&list, "a/../../etc/passwd\n").unwrap();
    let err = Filter::new().files_from(&root, &list).unwrap_err();
    assert!(matches!(err, FilterError::Line { line: 1, .. }), "{err}");
    assert!(err.to_string().contains(".."), "{err}");

    let err = Filter::new()
        .files_from(&root, &dir.path().join("no-list"))
        .unwrap_err();
    assert!(matches!(err, FilterError::Read { .. }), "{err}");
}

#[test]
fn files_from_takes_a_symlink_to_a_directory_as_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    source(&root);
    symlink("d", root.join("link")).unwrap();
    let list = dir.path().join("list");
    fs::write(&list, "link\n").unwrap();
    let f = Filter::new().files_from(&root, &list).unwrap();
    assert!(f.decide(b"link", false));
    assert!(!f.to_rules().contains(&b"+ /link/**".to_vec()));
}

fn rels(root: &Path, opts: &ScanOptions) -> Vec<String> {
    scan_with(root, opts)
        .map(|item| String::from_utf8(item.unwrap().rel).unwrap())
        .collect()
}

#[test]
fn the_scan_skips_excluded_entries_and_never_opens_an_excluded_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    source(&root);
    fs::write(root.join("a/b/scratch.tmp"), b"x").unwrap();
    fs::create_dir(root.join("x/locked")).unwrap();
    fs::write(root.join("x/locked/secret"), b"x").unwrap();
    fs::set_permissions(root.join("x/locked"), Permissions::from_mode(0o000)).unwrap();
    let opts = ScanOptions {
        filter: Some(Arc::new(filter(&["- *.tmp", "- /x/", "- other/"]))),
        ..ScanOptions::default()
    };
    let want = [
        "", "a", "a/b", "a/b/c", "a/b/c/f", "a/b/g", "d", "d/e", "d/e/i", "d/j", "top", "we*rd",
    ];
    if rustix::process::geteuid().is_root() {
        // As root the mode-000 directory would be read: scan as nobody, where opening it
        // would fail, and check that no error comes because it is never opened.
        fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "scan_as_nobody", "--nocapture"])
            .env("HAUL_SCAN_ROOT", &root)
            .output()
            .expect("setpriv (util-linux) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("scanned: {want:?}")), "{text}");
    }
    // In this process too (not opened either: as root it could have been).
    assert_eq!(rels(&root, &opts), want);
    fs::set_permissions(root.join("x/locked"), Permissions::from_mode(0o755)).unwrap();
    // Without the filter, the same tree has all of it.
    assert!(rels(&root, &ScanOptions::default()).contains(&"x/locked/secret".to_string()));
}

/// Run by the test above as an unprivileged user, with `HAUL_SCAN_ROOT` set; on its own (as
/// part of the suite) it has nothing to scan and does nothing.
#[test]
fn scan_as_nobody() {
    let Some(root) = std::env::var_os("HAUL_SCAN_ROOT") else {
        return;
    };
    let opts = ScanOptions {
        filter: Some(Arc::new(filter(&["- *.tmp", "- /x/", "- other/"]))),
        ..ScanOptions::default()
    };
    let mut seen = Vec::new();
    for item in scan_with(Path::new(&root), &opts) {
        match item {
            Ok(entry) => seen.push(String::from_utf8(entry.rel).unwrap()),
            Err(e) => panic!("an error: {e}"),
        }
    }
    println!("scanned: {seen:?}");
    // Opening the excluded directory would have failed as this user: check it would.
    let locked = Path::new(&root).join("x/locked");
    assert!(
        fs::read_dir(&locked).is_err(),
        "the test needs {locked:?} unreadable"
    );
}
