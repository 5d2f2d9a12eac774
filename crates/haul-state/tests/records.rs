//! The run history, the estimates drawn from it, the log and the tasks.

mod common;

use haul_state::{
    ESTIMATE_RUNS, Level, Outcome, RunEnd, RunFilter, RunId, RunKind, RunStart, StateDb, StateError,
};

use common::{ok, push};

fn open() -> (tempfile::TempDir, StateDb) {
    let tmp = tempfile::tempdir().unwrap();
    let db = StateDb::open(tmp.path()).unwrap();
    (tmp, db)
}

/// A finished run from `started` to `ended` (ms) that moved `bytes` and ended `outcome`.
fn record(db: &StateDb, start: &RunStart, started: i64, ended: i64, bytes: u64, outcome: Outcome) {
    let id = db.start_run_at(start, started).unwrap();
    let end = RunEnd {
        outcome,
        ..ok(bytes)
    };
    db.finish_run_at(id, &end, ended).unwrap();
}

#[test]
fn runs_are_recorded_filtered_and_listed_newest_first() {
    let (_tmp, db) = open();
    let gw = RunStart {
        profile: Some("groupwise".into()),
        ..push("/po1", "quic://t/po1")
    };
    let copy = RunStart {
        kind: RunKind::Copy,
        ..push("/po1", "/mnt/po1")
    };
    let a = db.start_run_at(&gw, 1_000).unwrap();
    let b = db.start_run_at(&copy, 2_000).unwrap();
    let c = db.start_run_at(&gw, 3_000).unwrap();
    let running = db.run(c).unwrap().unwrap();
    assert_eq!(
        (running.ended_at, running.outcome, running.bytes),
        (None, None, 0)
    );

    let failed = RunEnd {
        bytes: 10,
        files: 0,
        chunks: 1,
        outcome: Outcome::Failed,
        error: Some("connection lost".into()),
    };
    db.finish_run_at(a, &failed, 1_500).unwrap();
    db.finish_run_at(b, &ok(7), 2_700).unwrap();

    let all = db.runs(&RunFilter::default()).unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [c, b, a]);
    let first = &all[2];
    assert_eq!(first.outcome, Some(Outcome::Failed));
    assert_eq!(first.error.as_deref(), Some("connection lost"));
    assert_eq!(
        (first.bytes, first.chunks, first.duration_ms()),
        (10, 1, Some(500))
    );

    let by = |filter: RunFilter| -> Vec<RunId> {
        db.runs(&filter)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    let profile = RunFilter {
        profile: Some("groupwise".into()),
        ..RunFilter::default()
    };
    assert_eq!(by(profile.clone()), [c, a]);
    let kind = RunFilter {
        kind: Some(RunKind::Copy),
        ..RunFilter::default()
    };
    assert_eq!(by(kind), [b]);
    let route = RunFilter {
        source: Some("/po1".into()),
        destination: Some("quic://t/po1".into()),
        ..RunFilter::default()
    };
    assert_eq!(by(route), [c, a]);
    let limited = RunFilter {
        limit: Some(1),
        ..profile
    };
    assert_eq!(by(limited), [c]);
    let none = RunFilter {
        source: Some("/elsewhere".into()),
        ..RunFilter::default()
    };
    assert!(by(none).is_empty());
}

#[test]
fn finishing_an_unknown_run_says_so() {
    let (_tmp, db) = open();
    let err = db.finish_run(RunId(99), &ok(1)).unwrap_err();
    assert!(
        matches!(err, StateError::NoSuchRun { id: RunId(99), .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("run 99"));
}

#[test]
fn other_kinds_keep_their_names() {
    let (_tmp, db) = open();
    let start = RunStart {
        kind: RunKind::from("groupwise-po"),
        ..push("/po1", "/dst")
    };
    let id = db.start_run(&start).unwrap();
    assert_eq!(
        db.run(id).unwrap().unwrap().kind,
        RunKind::Other("groupwise-po".into())
    );
    assert_eq!(RunKind::from("push"), RunKind::Push);
    assert_eq!(RunKind::Pull.to_string(), "pull");
}

#[test]
fn the_estimate_is_the_median_of_the_latest_successful_runs() {
    let (_tmp, db) = open();
    let route = push("/po1", "quic://t/po1");
    assert_eq!(
        db.throughput_estimate(&RunKind::Push, "/po1", "quic://t/po1")
            .unwrap(),
        None
    );

    // 1, 2 and 9 MB/s: the median is 2 MB/s where the mean would be 4.
    record(&db, &route, 0, 10_000, 10_000_000, Outcome::Ok);
    record(&db, &route, 20_000, 25_000, 10_000_000, Outcome::Ok);
    record(&db, &route, 30_000, 31_000, 9_000_000, Outcome::Ok);
    // Not counted: failed, interrupted, nothing moved, unfinished, another route or kind.
    record(&db, &route, 40_000, 40_001, 1 << 40, Outcome::Failed);
    record(&db, &route, 41_000, 41_001, 1 << 40, Outcome::Interrupted);
    record(&db, &route, 42_000, 43_000, 0, Outcome::Ok);
    db.start_run_at(&route, 44_000).unwrap();
    record(
        &db,
        &push("/po1", "quic://t/other"),
        0,
        1,
        1 << 40,
        Outcome::Ok,
    );
    let copy = RunStart {
        kind: RunKind::Copy,
        ..route.clone()
    };
    record(&db, &copy, 0, 1, 1 << 40, Outcome::Ok);

    let estimate = db
        .throughput_estimate(&RunKind::Push, "/po1", "quic://t/po1")
        .unwrap()
        .unwrap();
    assert_eq!(estimate.runs_used, 3);
    assert_eq!(estimate.bytes_per_sec, 2_000_000.0);

    // An even count takes the mean of the middle two: 1, 2, 4, 9 MB/s -> 3 MB/s.
    record(&db, &route, 50_000, 52_000, 8_000_000, Outcome::Ok);
    let estimate = db
        .throughput_estimate(&RunKind::Push, "/po1", "quic://t/po1")
        .unwrap()
        .unwrap();
    assert_eq!(
        (estimate.runs_used, estimate.bytes_per_sec),
        (4, 3_000_000.0)
    );
}

#[test]
fn the_estimate_forgets_old_runs() {
    let (_tmp, db) = open();
    let route = push("/po1", "/dst");
    // Ten slow runs long ago, then ESTIMATE_RUNS fast ones: only the fast ones count.
    for i in 0..10 {
        record(
            &db,
            &route,
            i * 10_000,
            i * 10_000 + 1_000,
            1_000,
            Outcome::Ok,
        );
    }
    for i in 0..ESTIMATE_RUNS as i64 {
        let at = 1_000_000 + i * 10_000;
        record(&db, &route, at, at + 1_000, 50_000_000, Outcome::Ok);
    }
    let estimate = db
        .throughput_estimate(&RunKind::Push, "/po1", "/dst")
        .unwrap()
        .unwrap();
    assert_eq!(estimate.runs_used, ESTIMATE_RUNS);
    assert_eq!(estimate.bytes_per_sec, 50_000_000.0);
}

#[test]
fn log_lines_are_kept_by_profile_and_tailed_in_order() {
    let (_tmp, db) = open();
    let run = db.start_run(&push("/po1", "/dst")).unwrap();
    db.log(Some(run), Some("groupwise"), Level::Info, "one")
        .unwrap();
    db.log(None, Some("app-layering"), Level::Warn, "other profile")
        .unwrap();
    db.log(None, Some("groupwise"), Level::Error, "two")
        .unwrap();
    db.log(None, None, Level::Debug, "no profile").unwrap();
    db.log(Some(run), Some("groupwise"), Level::Info, "three")
        .unwrap();

    let tail = db.logs(Some("groupwise"), 2).unwrap();
    assert_eq!(
        tail.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
        ["two", "three"]
    );
    assert_eq!(tail[0].level, Level::Error);
    assert_eq!(tail[1].run, Some(run));
    assert!(tail[0].at > 0 && tail[0].id < tail[1].id);
    let everything = db.logs(None, 100).unwrap();
    assert_eq!(everything.len(), 5);
    assert_eq!(everything[0].message, "one");
    assert!(db.logs(Some("nobody"), 10).unwrap().is_empty());

    let err = db
        .log(Some(RunId(12345)), None, Level::Info, "orphan")
        .unwrap_err();
    assert!(
        matches!(
            err,
            StateError::NoSuchRun {
                id: RunId(12345),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn tasks_are_stored_replaced_listed_and_deleted() {
    let (_tmp, db) = open();
    assert_eq!(db.task("po1").unwrap(), None);
    db.put_task("po1", "groupwise-po", r#"{"step":"scan"}"#)
        .unwrap();
    db.put_task("po2", "groupwise-po", r#"{"step":"scan"}"#)
        .unwrap();
    db.put_task("elm", "app-layering", "[]").unwrap();
    let first = db.task("po1").unwrap().unwrap();
    assert_eq!(
        (first.kind.as_str(), first.state.as_str()),
        ("groupwise-po", r#"{"step":"scan"}"#)
    );
    assert_eq!(first.created_at, first.updated_at);

    std::thread::sleep(std::time::Duration::from_millis(5));
    db.put_task("po1", "groupwise-po", r#"{"step":"copy","done":3}"#)
        .unwrap();
    let replaced = db.task("po1").unwrap().unwrap();
    assert_eq!(replaced.state, r#"{"step":"copy","done":3}"#);
    assert_eq!(replaced.created_at, first.created_at);
    assert!(replaced.updated_at > first.updated_at);

    let ids = |kind| -> Vec<String> { db.tasks(kind).unwrap().into_iter().map(|t| t.id).collect() };
    assert_eq!(ids(Some("groupwise-po")), ["po1", "po2"]);
    assert_eq!(ids(None), ["elm", "po1", "po2"]);

    let err = db.put_task("po3", "groupwise-po", "{not json").unwrap_err();
    assert!(
        matches!(err, StateError::InvalidTaskState { ref id } if id == "po3"),
        "{err:?}"
    );
    assert_eq!(db.task("po3").unwrap(), None);

    assert!(db.delete_task("po2").unwrap());
    assert!(!db.delete_task("po2").unwrap());
    assert_eq!(ids(Some("groupwise-po")), ["po1"]);

    // Tasks survive a restart.
    let path = db.path().parent().unwrap().to_path_buf();
    drop(db);
    let db = StateDb::open(&path).unwrap();
    assert_eq!(db.task("po1").unwrap().unwrap().state, replaced.state);
}

#[test]
fn records_print_as_json() {
    let (_tmp, db) = open();
    let id = db
        .start_run_at(
            &RunStart {
                profile: Some("groupwise".into()),
                ..push("/po1", "/dst")
            },
            1_000,
        )
        .unwrap();
    db.finish_run_at(id, &ok(3), 2_000).unwrap();
    let run = db.run(id).unwrap().unwrap();
    let json = serde_json::to_value(&run).unwrap();
    assert_eq!(json["id"], id.0);
    assert_eq!(json["kind"], "push");
    assert_eq!(json["outcome"], "ok");
    assert_eq!(json["profile"], "groupwise");
    assert_eq!(json["ended_at"], 2_000);
    let back: haul_state::RunRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back, run);

    db.log(Some(id), None, Level::Warn, "w").unwrap();
    let line = serde_json::to_value(&db.logs(None, 1).unwrap()[0]).unwrap();
    assert_eq!(
        (line["level"].as_str(), line["run"].as_i64()),
        (Some("warn"), Some(id.0))
    );

    let other = serde_json::to_value(RunKind::Other("groupwise-po".into())).unwrap();
    assert_eq!(other, "groupwise-po");
    let estimate = db
        .throughput_estimate(&RunKind::Push, "/po1", "/dst")
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::to_value(estimate).unwrap()["runs_used"], 1);
}
