//! The tree registry: a record per subtree in the top root's `.haul/registry/`, replaced
//! whole, removed by an empty record, listed by subtree, scoped to a sub-root, and never
//! among the user's files.

use haul_store::{MAX_RECORD, RelPath, Root};

fn rel(p: &str) -> RelPath {
    RelPath::parse(p.as_bytes()).unwrap()
}

#[test]
fn records_are_replaced_listed_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    assert_eq!(root.registry_get(&rel("vol1")).unwrap(), None);
    assert!(root.registry_list().unwrap().is_empty());
    // Removing what was never written is not an error.
    root.registry_put(&rel("vol1"), "").unwrap();

    root.registry_put(&rel("vol1"), "first\nwith lines")
        .unwrap();
    root.registry_put(&rel("vol1"), "{\"second\":true}")
        .unwrap();
    root.registry_put(&rel("a/deeper/tree"), "other").unwrap();
    assert_eq!(
        root.registry_get(&rel("vol1")).unwrap().as_deref(),
        Some("{\"second\":true}")
    );
    let listed = root.registry_list().unwrap();
    assert_eq!(
        listed,
        vec![
            (rel("a/deeper/tree"), "other".to_string()),
            (rel("vol1"), "{\"second\":true}".to_string())
        ]
    );
    // The subtree need not exist, and nothing appears among the user's files.
    assert!(!tmp.path().join("vol1").exists());
    assert!(tmp.path().join(".haul/registry").is_dir());

    root.registry_put(&rel("vol1"), "").unwrap();
    assert_eq!(root.registry_get(&rel("vol1")).unwrap(), None);
    assert_eq!(root.registry_list().unwrap().len(), 1);

    // A second open of the same root sees the same records.
    let again = Root::open(tmp.path()).unwrap();
    assert_eq!(
        again
            .registry_get(&rel("a/deeper/tree"))
            .unwrap()
            .as_deref(),
        Some("other")
    );
}

#[test]
fn a_sub_root_sees_only_its_own_records_by_its_own_paths() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("grant")).unwrap();
    let root = Root::open(tmp.path()).unwrap();
    root.registry_put(&rel("outside"), "not yours").unwrap();
    let sub = root.subdir(&rel("grant")).unwrap();
    sub.registry_put(&rel("vol"), "inside").unwrap();
    assert_eq!(
        sub.registry_list().unwrap(),
        vec![(rel("vol"), "inside".to_string())]
    );
    assert_eq!(sub.registry_get(&rel("outside")).unwrap(), None);
    // From the top, the sub-root's record is under the grant's path.
    assert_eq!(
        root.registry_get(&rel("grant/vol")).unwrap().as_deref(),
        Some("inside")
    );
}

#[test]
fn oversized_records_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    root.registry_put(&rel("v"), "kept").unwrap();
    let big = "x".repeat(MAX_RECORD + 1);
    let err = root.registry_put(&rel("v"), &big).unwrap_err();
    assert!(err.to_string().contains("longer than"), "{err}");
    assert_eq!(
        root.registry_get(&rel("v")).unwrap().as_deref(),
        Some("kept")
    );
    // The largest allowed record round-trips.
    let max = "y".repeat(MAX_RECORD);
    root.registry_put(&rel("v"), &max).unwrap();
    assert_eq!(
        root.registry_get(&rel("v")).unwrap().unwrap().len(),
        MAX_RECORD
    );
}
