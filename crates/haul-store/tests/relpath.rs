//! RelPath: what the wire may and may not name.

use haul_store::{PathError, RelPath};
use proptest::prelude::*;

#[test]
fn accepts_odd_but_legal_names() {
    let odd: &[&[u8]] = &[
        b"with space/and  two",
        "ünïcødé/日本語.txt".as_bytes(),
        b"new\nline/tab\there",
        b"\xff\xfe invalid utf8/\x80",
        b"...",
        b".hidden/..dots/x..",
        b"a/.haul",  // reserved only as the first component
        b".haulx/y", // a longer name is not the reserved one
        b"-/~/$HOME/*",
    ];
    for &bytes in odd {
        let p = RelPath::parse(bytes).unwrap_or_else(|e| panic!("{bytes:?}: {e}"));
        assert_eq!(p.to_bytes(), bytes);
        assert!(!p.is_root());
    }
    let bad = RelPath::parse(b"\xff\xfe").unwrap();
    assert_eq!(bad.display(), "\u{fffd}\u{fffd}");
}

#[test]
fn empty_is_root() {
    let root = RelPath::parse(b"").unwrap();
    assert!(root.is_root());
    assert_eq!(root, RelPath::root());
    assert_eq!(root.components().count(), 0);
    assert_eq!(root.to_bytes(), b"");
}

#[test]
fn rejects_each_bad_form() {
    let cases: &[(&[u8], PathError)] = &[
        (b"/etc/passwd", PathError::Absolute),
        (b"/", PathError::Absolute),
        (b"a//b", PathError::EmptyComponent),
        (b"a/", PathError::EmptyComponent),
        (b"./a", PathError::Dot),
        (b"a/./b", PathError::Dot),
        (b"..", PathError::DotDot),
        (b"a/../../etc", PathError::DotDot),
        (b"a/b\0c", PathError::Nul),
        (b".haul", PathError::Reserved),
        (b".haul/staging/x", PathError::Reserved),
    ];
    for (bytes, want) in cases {
        assert_eq!(RelPath::parse(bytes).unwrap_err(), *want, "{bytes:?}");
    }
    let long_name = vec![b'n'; 256];
    assert_eq!(
        RelPath::parse(&long_name).unwrap_err(),
        PathError::NameTooLong { len: 256 }
    );
    assert!(RelPath::parse(&vec![b'n'; 255]).is_ok());
    let long_path: Vec<u8> = [&b"d/"[..]; 2049].concat()[..4097].to_vec();
    assert_eq!(
        RelPath::parse(&long_path).unwrap_err(),
        PathError::PathTooLong { len: 4097 }
    );
    // Messages say what is wrong and why.
    assert!(
        PathError::DotDot
            .to_string()
            .contains("out of the receiver's root")
    );
    assert!(PathError::Reserved.to_string().contains(".haul"));
}

#[test]
fn push_checks_like_parse() {
    let mut p = RelPath::root();
    assert_eq!(p.push(b".haul").unwrap_err(), PathError::Reserved);
    assert_eq!(p.push(b"a/b").unwrap_err(), PathError::Slash);
    assert_eq!(p.push(b"..").unwrap_err(), PathError::DotDot);
    assert_eq!(p.push(b"").unwrap_err(), PathError::EmptyComponent);
    assert_eq!(p.push(b"x\0").unwrap_err(), PathError::Nul);
    p.push(b"a").unwrap();
    p.push(b".haul").unwrap(); // fine below the first level
    assert_eq!(p.to_bytes(), b"a/.haul");
    let mut deep = RelPath::parse(&vec![b'n'; 255]).unwrap();
    while deep.push(&[b'n'; 255]).is_ok() {}
    assert!(deep.to_bytes().len() <= 4096);
    assert!(matches!(
        deep.push(&[b'n'; 255]),
        Err(PathError::PathTooLong { .. })
    ));
}

#[test]
fn join_and_split() {
    let a = RelPath::parse(b"a/b").unwrap();
    let c = RelPath::parse(b"c").unwrap();
    assert_eq!(a.join(&c).to_bytes(), b"a/b/c");
    assert_eq!(RelPath::root().join(&c), c);
    assert_eq!(a.join(&RelPath::root()), a);
    let abc = a.join(&c);
    let (parent, name) = abc.parent_and_name().unwrap();
    assert_eq!(parent, a);
    assert_eq!(name, b"c");
}

fn component() -> impl Strategy<Value = Vec<u8>> {
    // Biased towards the interesting bytes: '/', '.', NUL.
    prop::collection::vec(
        prop_oneof![Just(b'/'), Just(b'.'), Just(0u8), any::<u8>()],
        0..12,
    )
}

proptest! {
    #[test]
    fn anything_accepted_round_trips_and_is_clean(bytes in component()) {
        if let Ok(p) = RelPath::parse(&bytes) {
            prop_assert_eq!(p.to_bytes(), bytes.clone());
            let joined: Vec<u8> = p.components().collect::<Vec<_>>().join(&b'/');
            prop_assert_eq!(&joined, &bytes);
            for c in p.components() {
                prop_assert!(!c.is_empty() && c != b"." && c != b"..");
                prop_assert!(!c.contains(&0) && !c.contains(&b'/'));
            }
            prop_assert!(p.components().next() != Some(&b".haul"[..]));
            // Rebuilding by push gives the same path.
            let mut rebuilt = RelPath::root();
            for c in p.components() {
                rebuilt.push(c).unwrap();
            }
            prop_assert_eq!(rebuilt, p);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_is_clean(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = RelPath::parse(&bytes) {
            prop_assert_eq!(p.to_bytes(), bytes);
            prop_assert!(p.components().all(|c| !c.is_empty() && c != b"." && c != b".."));
        }
    }
}
