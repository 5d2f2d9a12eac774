//! Leases on destination subtrees: overlap, expiry and takeover, renewal, release, two opens
//! of one root contending, and holder strings that try to forge lines of the lease file.

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use haul_store::{RelPath, Root, StoreError};

fn rel(p: &str) -> RelPath {
    RelPath::parse(p.as_bytes()).unwrap()
}

const LONG: Duration = Duration::from_secs(600);

fn leased_by(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Err(StoreError::Leased { holder, .. }) => holder,
        other => panic!("expected a Leased refusal, got {other:?}"),
    }
}

#[test]
fn overlapping_leases_of_other_holders_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    assert!(root.leases().is_empty());
    root.check_lease(&rel("anything"), None).unwrap();

    let a = root
        .take_lease(&rel("a/b"), "job-a", "replicate", LONG)
        .unwrap();
    assert!(a.took_over.is_none() && !a.renewed);
    assert_eq!(a.info.subtree, rel("a/b"));
    // The same subtree, an ancestor, a descendant, the whole root: all overlap.
    for p in ["a/b", "a", "a/b/c/d", ""] {
        assert_eq!(
            leased_by(root.take_lease(&rel(p), "job-b", "restore", LONG)),
            "job-a"
        );
    }
    // Siblings and names that merely share a prefix do not.
    root.take_lease(&rel("a/bc"), "job-b", "restore", LONG)
        .unwrap();
    root.take_lease(&rel("a/c"), "job-c", "scrub", LONG)
        .unwrap();
    // A holder may nest leases of its own.
    root.take_lease(&rel("a/b/inner"), "job-a", "replicate", LONG)
        .unwrap();
    assert_eq!(root.leases().len(), 4);

    // Paths inside a lease, or holding one, are refused to everyone but the holder.
    root.check_lease(&rel("a/b/file"), Some("job-a")).unwrap();
    assert_eq!(
        leased_by(root.check_lease(&rel("a/b/file"), Some("job-b"))),
        "job-a"
    );
    assert_eq!(leased_by(root.check_lease(&rel("a/b/file"), None)), "job-a");
    let err = root.check_lease(&rel("a"), Some("job-a")).unwrap_err();
    assert!(matches!(err, StoreError::Leased { ref holder, .. } if holder != "job-a"));
    root.check_lease(&rel("a/bc/x"), Some("job-b")).unwrap();
    root.check_lease(&rel("elsewhere"), None).unwrap();
    root.check_lease(&rel("a/d"), None).unwrap();

    // The message says who, what for, until when and what to do.
    let msg = root
        .check_lease(&rel("a/b/x"), Some("me"))
        .unwrap_err()
        .to_string();
    for part in [
        "\"job-a\"",
        "\"replicate\"",
        "UTC",
        "in ",
        "release",
        "expire",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(
        msg.contains(&tmp.path().join("a/b/x").display().to_string()),
        "{msg}"
    );
}

#[test]
fn an_expired_lease_is_taken_over_and_its_holder_loses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    root.take_lease(
        &rel("t"),
        "dead-job",
        "replicate",
        Duration::from_millis(100),
    )
    .unwrap();
    root.take_lease(
        &rel("t/sub"),
        "dead-job",
        "replicate",
        Duration::from_millis(100),
    )
    .unwrap();
    assert_eq!(
        leased_by(root.take_lease(&rel("t"), "new-job", "restore", LONG)),
        "dead-job"
    );
    std::thread::sleep(Duration::from_millis(150));
    assert!(root.leases().iter().all(|l| l.is_expired()));
    // Expired: nobody is refused any more, and a new holder takes it over.
    root.check_lease(&rel("t/x"), None).unwrap();
    let taken = root
        .take_lease(&rel("t"), "new-job", "restore", LONG)
        .unwrap();
    assert_eq!(taken.took_over.as_deref(), Some("dead-job"));
    assert!(!taken.renewed);
    // Every overlapping expired lease went with it.
    let all = root.leases();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].holder, "new-job");
    assert_eq!(
        leased_by(root.check_lease(&rel("t/sub/f"), Some("dead-job"))),
        "new-job"
    );
    // The old holder cannot renew or release what it lost.
    assert!(matches!(
        root.renew_lease(&rel("t"), "dead-job", LONG),
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        root.renew_lease(&rel("t/sub"), "dead-job", LONG),
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(!root.release_lease(&rel("t"), "dead-job").unwrap());
    assert_eq!(root.leases().len(), 1);
}

#[test]
fn renewing_extends_the_expiry_and_keeps_the_time_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    let first = root
        .take_lease(&rel("r"), "job", "replicate", Duration::from_millis(100))
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // Expired, but nobody took it over: still the holder's to renew.
    assert!(root.leases()[0].is_expired());
    let renewed = root.renew_lease(&rel("r"), "job", LONG).unwrap();
    assert!(renewed.renewed);
    assert!(renewed.info.expires_unix_ms >= first.info.expires_unix_ms + 500_000);
    assert_eq!(renewed.info.taken_unix_ms, first.info.taken_unix_ms);
    assert!(!root.leases()[0].is_expired());
    assert_eq!(
        leased_by(root.check_lease(&rel("r/x"), Some("other"))),
        "job"
    );
    // Taking it again is a renewal too.
    let again = root
        .take_lease(&rel("r"), "job", "replicate, second pass", LONG * 2)
        .unwrap();
    assert!(again.renewed && again.took_over.is_none());
    assert!(again.info.expires_unix_ms > renewed.info.expires_unix_ms);
    assert_eq!(again.info.taken_unix_ms, first.info.taken_unix_ms);
    assert_eq!(root.leases()[0].purpose, "replicate, second pass");
    // A lease that was never taken cannot be renewed.
    assert!(matches!(
        root.renew_lease(&rel("never"), "job", LONG),
        Err(StoreError::LeaseLost { .. })
    ));
}

#[test]
fn release_frees_the_subtree_only_for_its_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    assert!(
        !root.release_lease(&rel("x"), "job").unwrap(),
        "no lease directory yet"
    );
    root.take_lease(&rel("x"), "job", "replicate", LONG)
        .unwrap();
    assert!(!root.release_lease(&rel("x"), "someone-else").unwrap());
    assert!(
        !root.release_lease(&rel("x/y"), "job").unwrap(),
        "not that subtree"
    );
    assert_eq!(root.leases().len(), 1);
    assert!(root.release_lease(&rel("x"), "job").unwrap());
    assert!(root.leases().is_empty());
    assert!(!root.release_lease(&rel("x"), "job").unwrap());
    root.check_lease(&rel("x"), None).unwrap();
    root.take_lease(&rel("x"), "someone-else", "restore", LONG)
        .unwrap();
    // Only the lock file and the one lease are left in the directory.
    let mut names: Vec<String> = fs::read_dir(tmp.path().join(".haul/leases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0], ".lock");
    assert_eq!(names[1], blake3::hash(b"x").to_hex().to_string());
}

#[test]
fn two_opens_of_one_root_never_hold_the_same_subtree_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let roots = [
        Arc::new(Root::open(tmp.path()).unwrap()),
        Arc::new(Root::open(tmp.path()).unwrap()),
    ];
    // Everyone asks at once: exactly one wins.
    let barrier = Arc::new(Barrier::new(8));
    let winners: Vec<bool> = (0..8)
        .map(|i| {
            let root = Arc::clone(&roots[i % 2]);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                root.take_lease(&rel("shared"), &format!("job-{i}"), "race", LONG)
                    .is_ok()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
    let winner = winners.iter().position(|w| *w).unwrap();
    let holder = format!("job-{winner}");
    assert_eq!(roots[1 - winner % 2].leases()[0].holder, holder);
    assert!(
        roots[(winner + 1) % 2]
            .release_lease(&rel("shared"), &holder)
            .unwrap()
    );

    // Taking turns: at most one holder inside at any time.
    let inside = Arc::new(AtomicUsize::new(0));
    let turns = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let root = Arc::clone(&roots[i % 2]);
            let (inside, turns) = (Arc::clone(&inside), Arc::clone(&turns));
            std::thread::spawn(move || {
                let me = format!("worker-{i}");
                let mut mine = 0;
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while mine < 5 && std::time::Instant::now() < deadline {
                    // A descendant and the subtree itself overlap: the workers exclude each
                    // other whichever they ask for.
                    let path = if i % 2 == 0 { "shared" } else { "shared/part" };
                    if root.take_lease(&rel(path), &me, "turns", LONG).is_err() {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two holders at once"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    assert!(root.release_lease(&rel(path), &me).unwrap());
                    mine += 1;
                    turns.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(turns.load(Ordering::SeqCst), 20);
    assert!(roots[0].leases().is_empty());
}

#[test]
fn hostile_holder_strings_are_stored_safely() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    let holder = "evil\nsubtree=\nholder=victim\nexpires=18446744073709551615\n";
    let purpose = "line one\r\nline two \\n \u{1F600} =";
    root.take_lease(&rel("h"), holder, purpose, Duration::from_millis(100))
        .unwrap();
    let all = root.leases();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].holder, holder);
    assert_eq!(all[0].purpose, purpose);
    assert_eq!(all[0].subtree, rel("h"));
    let file = tmp
        .path()
        .join(".haul/leases")
        .join(blake3::hash(b"h").to_hex().to_string());
    let text = fs::read_to_string(file).unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("expires=")).count(),
        1
    );
    // The forged expiry did not take: the lease lapses as asked.
    std::thread::sleep(Duration::from_millis(150));
    let taken = root
        .take_lease(&rel("h"), "victim", "restore", LONG)
        .unwrap();
    assert_eq!(taken.took_over.as_deref(), Some(holder));
    // The message quotes the holder, so its newlines cannot fake lines of their own.
    let msg = root
        .check_lease(&rel("h"), Some(holder))
        .unwrap_err()
        .to_string();
    assert!(!msg.contains('\n'), "{msg}");
    // Empty and oversized holders are refused.
    assert!(root.take_lease(&rel("z"), "", "x", LONG).is_err());
    assert!(
        root.take_lease(&rel("z"), &"h".repeat(2000), "x", LONG)
            .is_err()
    );
}

#[test]
fn leases_from_a_sub_root_are_seen_from_the_top() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    let sub = root.subdir(&rel("dest")).unwrap();
    let lease = sub.take_lease(&rel("x"), "job", "replicate", LONG).unwrap();
    assert_eq!(lease.info.subtree, rel("dest/x"));
    assert_eq!(leased_by(root.check_lease(&rel("dest/x/f"), None)), "job");
    assert_eq!(leased_by(root.check_lease(&rel("dest"), None)), "job");
    root.check_lease(&rel("other"), None).unwrap();
    assert_eq!(
        leased_by(sub.check_lease(&rel("x/f"), Some("other"))),
        "job"
    );
    assert_eq!(
        leased_by(root.take_lease(&rel("dest"), "b", "", LONG)),
        "job"
    );
    assert!(sub.release_lease(&rel("x"), "job").unwrap());
    assert!(root.leases().is_empty());
}
