//! `haul serve` and `haul push` in two processes over loopback QUIC: the happy path, and the
//! ways a client is turned away without a byte written.

use std::ffi::OsStr;
use std::path::Path;

use haul_testing::{Haul, TreeBuilder, assert_same_tree, assert_success, summary_of};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

struct Setup {
    _tmp: tempfile::TempDir,
    src: std::path::PathBuf,
    root: std::path::PathBuf,
    server_cfg: std::path::PathBuf,
    client_cfg: std::path::PathBuf,
    token: std::path::PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().to_path_buf();
    let mut t = TreeBuilder::new(&p.join("po1"), 21);
    t.file("wphost.db", 40_000);
    t.file("ofuser/user1.db", 5 << 20);
    t.file("offiles/fd0/blob1", 3000);
    t.dir("ofwork");
    t.symlink("current", "ofuser/user1.db");
    std::fs::create_dir(p.join("root")).unwrap();
    haul_testing::cmd::write_secret(&p.join("token"), "s3cret-token\n");
    Setup {
        src: p.join("po1"),
        root: p.join("root"),
        server_cfg: p.join("server-cfg"),
        client_cfg: p.join("client-cfg"),
        token: p.join("token"),
        _tmp: tmp,
    }
}

/// Everything under the root except the receiver's own state directory.
fn user_entries(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".haul")
        .collect()
}

#[test]
fn push_to_serve_copies_the_tree_under_the_root() {
    let s = setup();
    let server = haul().serve(&s.root, &s.server_cfg, Some(&s.token));
    let out = push_pinned(&s, &server, "migrations/po1", &[os("--json")]);
    assert_same_tree(&s.src, &s.root.join("migrations/po1"));
    assert_eq!(summary_of(&out)["files_transferred"], 3);

    // A trailing slash copies into the directory under the source's own name.
    push_pinned(&s, &server, "into/", &[]);
    assert_same_tree(&s.src, &s.root.join("into/po1"));

    // Removing a copy and pushing it again recreates it (the receiver kept running).
    std::fs::remove_dir_all(s.root.join("migrations")).unwrap();
    push_pinned(&s, &server, "migrations/po1", &[]);
    assert_same_tree(&s.src, &s.root.join("migrations/po1"));
}

/// Pushes the setup's tree to `dest` on `server`, pinning its fingerprint and presenting the
/// setup's token; asserts success.
fn push_pinned(
    s: &Setup,
    server: &haul_testing::Server,
    dest: &str,
    extra: &[&OsStr],
) -> std::process::Output {
    let url = server.url(dest);
    let mut args = vec![os("push")];
    args.extend_from_slice(extra);
    args.extend([
        s.src.as_os_str(),
        os(&url),
        os("--fingerprint"),
        os(&server.fingerprint),
        os("--token-file"),
        s.token.as_os_str(),
    ]);
    let out = haul().run(&s.client_cfg, &args);
    assert!(
        out.status.success(),
        "push to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_wrong_token_is_refused_and_nothing_is_written() {
    let s = setup();
    let server = haul().serve(&s.root, &s.server_cfg, Some(&s.token));
    let wrong = s.root.parent().unwrap().join("wrong-token");
    haul_testing::cmd::write_secret(&wrong, "guess");
    let out = haul().run(
        &s.client_cfg,
        &[
            os("push"),
            s.src.as_os_str(),
            os(&server.url("po1")),
            os("--fingerprint"),
            os(&server.fingerprint),
            os("--token-file"),
            wrong.as_os_str(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused") && err.contains("token"), "{err}");
    assert!(
        user_entries(&s.root).is_empty(),
        "written: {:?}",
        user_entries(&s.root)
    );

    // Without any token the client says how to give one, before connecting.
    let out = haul().run(
        &s.client_cfg,
        &[
            os("push"),
            s.src.as_os_str(),
            os(&server.url("po1")),
            os("--fingerprint"),
            os(&server.fingerprint),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("--token-file") && err.contains("HAUL_TOKEN"),
        "{err}"
    );
    assert!(user_entries(&s.root).is_empty());
}

#[test]
fn a_wrong_fingerprint_is_refused_and_nothing_is_written() {
    let s = setup();
    let server = haul().serve(&s.root, &s.server_cfg, Some(&s.token));
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = haul().run(
        &s.client_cfg,
        &[
            os("push"),
            s.src.as_os_str(),
            os(&server.url("po1")),
            os("--fingerprint"),
            os(&wrong),
            os("--token-file"),
            s.token.as_os_str(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("fingerprint") && err.contains(&server.fingerprint),
        "{err}"
    );
    assert!(user_entries(&s.root).is_empty());
}

#[test]
fn known_hosts_trusts_on_first_use_and_refuses_a_changed_certificate() {
    let s = setup();
    let server = haul().serve(&s.root, &s.server_cfg, Some(&s.token));
    let push = |dest: &str| {
        haul().run(
            &s.client_cfg,
            &[
                os("push"),
                s.src.as_os_str(),
                os(&server.url(dest)),
                os("--token-file"),
                s.token.as_os_str(),
            ],
        )
    };
    let first = push("a");
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{err}");
    assert!(
        err.contains("WARNING") && err.contains(&server.fingerprint),
        "{err}"
    );
    let known = std::fs::read_to_string(s.client_cfg.join("known_hosts")).unwrap();
    assert!(
        known.contains(&server.addr) && known.contains(&server.fingerprint),
        "{known}"
    );

    let second = push("b");
    assert!(second.status.success());
    assert!(!String::from_utf8_lossy(&second.stderr).contains("WARNING"));

    // The recorded certificate no longer matches: refused, with the fix named.
    let forged = known.replace(&server.fingerprint, &format!("sha256:{}", "cd".repeat(32)));
    std::fs::write(s.client_cfg.join("known_hosts"), forged).unwrap();
    let third = push("c");
    let err = String::from_utf8_lossy(&third.stderr);
    assert_eq!(third.status.code(), Some(1), "{err}");
    assert!(err.contains("remove the line"), "{err}");
    assert!(!s.root.join("c").exists());
}

#[test]
fn serve_generates_a_private_token_and_keeps_its_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    let first = haul().serve(&s.root, &s.server_cfg, None);
    let fingerprint = first.fingerprint.clone();
    let err = first.stop();
    let token = s.server_cfg.join("token");
    assert!(
        err.contains(&token.display().to_string()),
        "serve says where the token is: {err}"
    );
    assert_eq!(
        std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = haul().serve(&s.root, &s.server_cfg, None);
    assert_eq!(
        again.fingerprint, fingerprint,
        "the certificate is created once and kept"
    );
    let out = haul().run(
        &s.client_cfg,
        &[
            os("push"),
            s.src.as_os_str(),
            os(&again.url("po1")),
            os("--fingerprint"),
            os(&fingerprint),
            os("--token-file"),
            token.as_os_str(),
        ],
    );
    assert_success(&out);
}

#[test]
fn an_unreachable_receiver_is_a_clear_error() {
    let s = setup();
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("quic://{}/po1", silent.local_addr().unwrap());
    let out = haul().run(
        &s.client_cfg,
        &[
            os("push"),
            s.src.as_os_str(),
            os(&url),
            os("--fingerprint"),
            os(&format!("sha256:{}", "00".repeat(32))),
            os("--token-file"),
            s.token.as_os_str(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("haul serve") && err.contains("running"),
        "{err}"
    );
}

#[test]
fn a_granted_token_writes_only_under_its_own_subdirectory() {
    let s = setup();
    let dir = s.root.parent().unwrap().to_path_buf();
    haul_testing::cmd::write_secret(&dir.join("po1.token"), "token-for-po1");
    haul_testing::cmd::write_secret(&dir.join("po2.token"), "token-for-po2");
    let grant = |name: &str| -> Vec<std::ffi::OsString> {
        vec![
            "--grant".into(),
            format!("{name}={}", dir.join(format!("{name}.token")).display()).into(),
        ]
    };
    let mut extra = grant("po1");
    extra.extend(grant("po2"));
    let server = haul().serve_with(&s.root, &s.server_cfg, &extra);
    let push = |token: &str, dest: &str| {
        haul().run(
            &s.client_cfg,
            &[
                os("push"),
                s.src.as_os_str(),
                os(&server.url(dest)),
                os("--fingerprint"),
                os(&server.fingerprint),
                os("--token-file"),
                dir.join(token).as_os_str(),
            ],
        )
    };
    let out = push("po1.token", "copy");
    assert_success(&out);
    assert_same_tree(&s.src, &s.root.join("po1/copy"));
    let out = push("po2.token", "copy");
    assert_success(&out);
    assert_same_tree(&s.src, &s.root.join("po2/copy"));

    // A granted token cannot climb out of its sub-directory into another's.
    let out = push("po1.token", "../po2/stolen");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(!s.root.join("po2/stolen").exists());
    // With only grants configured, no token covers the whole root.
    let out = push("token", "anywhere");
    assert_eq!(out.status.code(), Some(1));
    assert!(!s.root.join("anywhere").exists());
}
