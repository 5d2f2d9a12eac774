//! The `relpath` harness: arbitrary bytes into `RelPath::parse`.
//!
//! `parse` is compared with an independent reference validator written from the documented
//! rules, so a rule that is missing (accepts too much) or too strict (refuses a good path)
//! both show up. For accepted paths the other accessors must agree with the bytes.

use haul_store::{MAX_NAME, MAX_PATH, RESERVED, RelPath};

/// The documented rules, written independently of `haul-store`: empty is the root; otherwise
/// at most 4096 bytes, no leading '/', and every '/'-separated component non-empty, not "."
/// or "..", free of NUL, at most 255 bytes, the first not ".haul".
pub fn reference_accepts(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    if bytes.len() > MAX_PATH {
        return false;
    }
    bytes.split(|&b| b == b'/').enumerate().all(|(i, name)| {
        !name.is_empty()
            && name != b"."
            && name != b".."
            && !name.contains(&0)
            && name.len() <= MAX_NAME
            && !(i == 0 && name == RESERVED)
    })
}

/// Runs one input. Panics when a property fails.
pub fn run(data: &[u8]) {
    let parsed = RelPath::parse(data);
    assert_eq!(
        parsed.is_ok(),
        reference_accepts(data),
        "parse and the reference rules disagree: {parsed:?}"
    );
    let Ok(path) = parsed else {
        return;
    };
    assert_eq!(
        path.to_bytes(),
        data,
        "to_bytes does not give back the parsed bytes"
    );
    assert_eq!(
        RelPath::parse(&path.to_bytes()).as_ref(),
        Ok(&path),
        "re-parse differs"
    );
    assert_eq!(path.is_root(), data.is_empty());
    // Debug and display must cope with any bytes (they are used in error messages).
    let _ = format!("{path:?}");
    let _ = path.display();

    let components: Vec<&[u8]> = path.components().collect();
    assert_eq!(
        components.join(&b'/'),
        data,
        "components do not join back to the path"
    );
    for (i, name) in components.iter().enumerate() {
        assert!(!name.is_empty(), "empty component accepted");
        assert!(*name != b"." && *name != b"..", "dot component accepted");
        assert!(!name.contains(&0), "NUL accepted");
        assert!(!name.contains(&b'/'), "slash inside a component");
        assert!(name.len() <= MAX_NAME, "over-long component accepted");
        assert!(
            !(i == 0 && *name == RESERVED),
            "reserved first component accepted"
        );
    }

    // Building the same path one name at a time must give the same value.
    let mut built = RelPath::root();
    for name in &components {
        if let Err(err) = built.push(name) {
            panic!("push refused a component parse accepted: {err}");
        }
    }
    assert_eq!(built, path, "push-built path differs");

    // The parent plus the last name is the path again.
    match path.parent_and_name() {
        None => assert!(path.is_root()),
        Some((parent, name)) => {
            assert_eq!(Some(&name), components.last(), "last name differs");
            let mut rebuilt = parent.clone();
            if let Err(err) = rebuilt.push(name) {
                panic!("push refused the path's own last name: {err}");
            }
            assert_eq!(rebuilt, path, "parent + name differs from the path");
            // A lone name parses by itself unless it is ".haul", legal only below the root.
            match RelPath::parse(name) {
                Ok(last) => assert_eq!(parent.join(&last), path, "join differs from the path"),
                Err(_) => assert_eq!(name, RESERVED, "a valid component does not parse alone"),
            }
        }
    }
}
