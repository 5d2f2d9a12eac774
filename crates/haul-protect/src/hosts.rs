//! Reaching a registered host: name resolution, the pinned certificate, the token; and
//! `host diagnose`, which checks each of those in turn and the token's scope.

use std::net::SocketAddr;
use std::time::Duration;

use haul_engine::EngineError;
use haul_engine::job::RemoteEnd;
use haul_engine::remote::{Remote, RemoteTarget};
use haul_net::{Fingerprint, Token, Trust};
use serde::Serialize;

use crate::error::ProtectError;
use crate::model::Host;

/// How long a host may take to answer before it counts as down.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `HOST:PORT` of a `quic://HOST:PORT` address (port 7470 when none is given).
pub fn host_key(url: &str) -> Result<String, ProtectError> {
    let rest = url.strip_prefix("quic://").ok_or_else(|| {
        ProtectError::Invalid(format!(
            "{url:?} is not a host address; write quic://HOST:PORT"
        ))
    })?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(ProtectError::Invalid(format!(
            "{url:?}: a host is quic://HOST:PORT, with no path (paths go in relationships)"
        )));
    }
    Ok(if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:7470")
    } else {
        authority.to_string()
    })
}

/// Resolves the host's name.
pub(crate) async fn resolve(host: &Host) -> Result<SocketAddr, ProtectError> {
    let key = host_key(&host.url)?;
    let down = |message: String| ProtectError::HostDown {
        host: host.name.clone(),
        message,
    };
    tokio::net::lookup_host(&key)
        .await
        .map_err(|e| down(format!("cannot resolve {key}: {e}")))?
        .next()
        .ok_or_else(|| down(format!("{key} resolves to no address")))
}

/// The fingerprint to pin and the token, as registered.
pub(crate) fn credentials(host: &Host) -> Result<(Trust, Token), ProtectError> {
    let fp: Fingerprint = host.fingerprint.parse().map_err(|e| {
        ProtectError::Invalid(format!(
            "host {}: fingerprint {:?}: {e}",
            host.name, host.fingerprint
        ))
    })?;
    let token = Token::load(&host.token_file).map_err(|e| {
        ProtectError::Local(format!(
            "host {}: cannot load the token file {}: {e}; fix it or register the host again",
            host.name,
            host.token_file.display()
        ))
    })?;
    Ok((Trust::Pinned(fp), token))
}

/// Where remote operations on the host go.
pub(crate) async fn target(host: &Host) -> Result<RemoteTarget, ProtectError> {
    let addr = resolve(host).await?;
    let (trust, token) = credentials(host)?;
    Ok(RemoteTarget {
        addr,
        host_key: host_key(&host.url)?,
        trust,
        token,
        holder: None,
    })
}

/// `path` on the host, as a job's end.
pub(crate) fn end(target: &RemoteTarget, path: &str) -> RemoteEnd {
    RemoteEnd::from_target(target, path)
}

/// Connects for remote operations, within `timeout`.
pub(crate) async fn connect(
    host: &Host,
    target: &RemoteTarget,
    timeout: Duration,
) -> Result<Remote, ProtectError> {
    let down = |message: String| ProtectError::HostDown {
        host: host.name.clone(),
        message,
    };
    match tokio::time::timeout(timeout, Remote::connect(target)).await {
        Err(_) => Err(down(format!(
            "{} did not answer within {}s; is `haul serve` running there?",
            host.url,
            timeout.as_secs()
        ))),
        Ok(Err(e @ EngineError::Refused { .. })) => Err(ProtectError::Refused(format!(
            "host {} refused this server's token: {e}; register the right --token-file",
            host.name
        ))),
        Ok(Err(e)) => Err(down(e.to_string())),
        Ok(Ok(remote)) => Ok(remote),
    }
}

/// Resolves and connects.
pub(crate) async fn open(
    host: &Host,
    timeout: Duration,
) -> Result<(Remote, RemoteTarget), ProtectError> {
    let target = target(host).await?;
    let remote = connect(host, &target, timeout).await?;
    Ok((remote, target))
}

/// One line of a checklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub item: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found (and, on a failure, what to do).
    pub detail: String,
}

impl Check {
    pub(crate) fn new(item: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            item: item.into(),
            ok,
            detail: detail.into(),
        }
    }
}

/// `host diagnose`: name resolution, reachability and the certificate, the token, and the
/// token's scope (looking, reading, writing), each a [`Check`]; later checks are skipped
/// (failed) when an earlier one fails.
pub async fn diagnose(host: &Host, timeout: Duration) -> Vec<Check> {
    let mut checks = Vec::new();
    let name = &host.name;
    let addr = match resolve(host).await {
        Ok(addr) => {
            checks.push(Check::new(
                format!("{name}: name resolution"),
                true,
                format!("{} is {addr}", host.url),
            ));
            addr
        }
        Err(e) => {
            checks.push(Check::new(
                format!("{name}: name resolution"),
                false,
                e.to_string(),
            ));
            return checks;
        }
    };
    let (trust, token) = match credentials(host) {
        Ok(c) => {
            checks.push(Check::new(
                format!("{name}: credentials"),
                true,
                format!(
                    "fingerprint and token file {} set",
                    host.token_file.display()
                ),
            ));
            c
        }
        Err(e) => {
            checks.push(Check::new(
                format!("{name}: credentials"),
                false,
                e.to_string(),
            ));
            return checks;
        }
    };
    let target = RemoteTarget {
        addr,
        host_key: host_key(&host.url).unwrap_or_default(),
        trust,
        token,
        holder: None,
    };
    let mut remote = match tokio::time::timeout(timeout, Remote::connect(&target)).await {
        Err(_) => {
            checks.push(Check::new(
                format!("{name}: reachable"),
                false,
                format!("no answer from {addr} within {}s", timeout.as_secs()),
            ));
            return checks;
        }
        Ok(Err(e @ EngineError::Refused { .. })) => {
            checks.push(Check::new(format!("{name}: reachable"), true, "answered"));
            checks.push(Check::new(format!("{name}: fingerprint"), true, "matches"));
            checks.push(Check::new(format!("{name}: token"), false, e.to_string()));
            return checks;
        }
        Ok(Err(e)) => {
            let text = e.to_string();
            let fingerprint = text.contains("fingerprint") || text.contains("certificate");
            if fingerprint {
                checks.push(Check::new(format!("{name}: reachable"), true, "answered"));
            }
            checks.push(Check::new(
                format!(
                    "{name}: {}",
                    if fingerprint {
                        "fingerprint"
                    } else {
                        "reachable"
                    }
                ),
                false,
                text,
            ));
            return checks;
        }
        Ok(Ok(remote)) => remote,
    };
    checks.push(Check::new(
        format!("{name}: reachable"),
        true,
        "answered over QUIC",
    ));
    checks.push(Check::new(
        format!("{name}: fingerprint"),
        true,
        format!("matches {}", host.fingerprint),
    ));
    checks.push(Check::new(format!("{name}: token"), true, "accepted"));
    let look = remote.registry_list().await;
    checks.push(Check::new(
        format!("{name}: scope: look (discover relationships)"),
        look.is_ok(),
        match &look {
            Ok(list) => format!("{} registry records", list.len()),
            Err(e) => e.to_string(),
        },
    ));
    // Reading a file that is not there tells a read scope (not found) from a write-only one.
    let read = remote.cat(".haul-protect-probe").await;
    let read_refused = matches!(&read, Err(e) if e.to_string().contains("needs a token with"));
    checks.push(Check::new(
        format!("{name}: scope: read (restores)"),
        !read_refused,
        match read_refused {
            true => format!(
                "{}; restores need read scope",
                read.err().map(|e| e.to_string()).unwrap_or_default()
            ),
            false => "allowed".into(),
        },
    ));
    // Removing a record that is not there changes nothing but is checked as a write.
    let write = remote.registry_put(".haul-protect-probe", "").await;
    checks.push(Check::new(
        format!("{name}: scope: write (updates, backups, expiry)"),
        write.is_ok(),
        match &write {
            Ok(()) => "allowed".into(),
            Err(e) => format!("{e}; updates need write scope"),
        },
    ));
    remote.close().await;
    checks
}
