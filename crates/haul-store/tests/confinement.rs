//! Property test: whatever relative paths a peer names, and whatever symlinks already stand in
//! the target tree (into the tree, to its parent, out to a sentinel directory, dangling), every
//! operation of the store either fails or acts inside the root. The outside directory never
//! changes.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use haul_proto::Meta;
use haul_store::{RelPath, Root};
use proptest::prelude::*;

/// A small alphabet of names so that generated paths collide with the planted links.
fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"a".to_vec()),
        Just(b"b".to_vec()),
        Just(b"link-out".to_vec()),
        Just(b"link-up".to_vec()),
        Just(b"link-in".to_vec()),
        Just(b"dangling".to_vec()),
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(b".haul".to_vec()),
        Just(b"".to_vec()),
    ]
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    (proptest::collection::vec(name(), 1..5), any::<bool>()).prop_map(|(parts, absolute)| {
        let mut p = if absolute { b"/".to_vec() } else { Vec::new() };
        p.extend(parts.join(&b'/'));
        p
    })
}

#[derive(Clone, Debug)]
enum Op {
    Mkdir(Vec<u8>),
    Install(Vec<u8>),
    Symlink(Vec<u8>),
    DirMeta(Vec<u8>),
    FileMeta(Vec<u8>),
    Aside(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        path().prop_map(Op::Mkdir),
        path().prop_map(Op::Install),
        path().prop_map(Op::Symlink),
        path().prop_map(Op::DirMeta),
        path().prop_map(Op::FileMeta),
        path().prop_map(Op::Aside),
    ]
}

/// Every entry under `dir`, with kind, mode, size and mtime, without following links.
fn snapshot(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = fs::symlink_metadata(&d).unwrap();
        out.push(format!(
            "{} {:o} {} {}.{}",
            d.display(),
            m.mode(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        ));
        if m.is_dir() {
            for e in fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn no_operation_leaves_the_root(ops in proptest::collection::vec(op(), 1..12)) {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("sentinel"), b"do not touch").unwrap();
        let root_dir = tmp.path().join("root");
        fs::create_dir_all(root_dir.join("a")).unwrap();
        symlink(&outside, root_dir.join("link-out")).unwrap();
        symlink("..", root_dir.join("link-up")).unwrap();
        symlink("a", root_dir.join("link-in")).unwrap();
        symlink("nowhere", root_dir.join("dangling")).unwrap();
        symlink(&outside, root_dir.join("a/link-out")).unwrap();
        let before = snapshot(&outside);
        let root = Root::open(&root_dir).unwrap();
        let meta = Meta { mode: 0o6777, mtime_sec: 1, mtime_nsec: 2 };
        for op in ops {
            // Errors are fine (refusing is the point); escaping is not.
            match op {
                Op::Mkdir(p) => { if let Ok(rel) = RelPath::parse(&p) { let _ = root.create_dir_all(&rel); } }
                Op::Install(p) => {
                    if let Ok(rel) = RelPath::parse(&p) {
                        let staging = root.create_staging(5).unwrap();
                        staging.write_at(0, b"evil!").unwrap();
                        let _ = root.install_file(staging, &rel, &meta.into());
                    }
                }
                Op::Symlink(p) => { if let Ok(rel) = RelPath::parse(&p) { let _ = root.install_symlink(&rel, b"/", &meta.into()); } }
                Op::DirMeta(p) => { if let Ok(rel) = RelPath::parse(&p) { let _ = root.set_dir_meta(&rel, &meta.into()); } }
                Op::FileMeta(p) => { if let Ok(rel) = RelPath::parse(&p) { let _ = root.set_file_meta(&rel, &meta.into()); } }
                Op::Aside(p) => { if let Ok(rel) = RelPath::parse(&p) { let _ = root.rename_aside(&rel); } }
            }
        }
        prop_assert_eq!(snapshot(&outside), before);
        prop_assert_eq!(fs::read(outside.join("sentinel")).unwrap(), b"do not touch".to_vec());
        // The parent of the root gained nothing either (link-up points there).
        let mut siblings: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        siblings.sort();
        prop_assert_eq!(siblings, vec![std::ffi::OsString::from("outside"), "root".into()]);
    }
}
