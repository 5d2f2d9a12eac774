//! The management server: a state directory (haul-state's SQLite database) holding the
//! server's id and settings, its hosts, policies, datasets, the relationships it owns and
//! the backups it made, each a task of kind `protect.*` whose JSON state is the record; and
//! the audit log (log lines of profile `protect`).

use std::path::{Path, PathBuf};

use haul_state::{Level, StateDb};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ProtectError;
use crate::model::{Backup, Dataset, Host, Policy, Relationship, ServerInfo, Settings};

/// The log profile of the audit log.
pub const AUDIT: &str = "protect";

const SERVER_ID: &str = "protect.server";

/// An open management server.
pub struct Server {
    db: StateDb,
    dir: PathBuf,
    info: ServerInfo,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("dir", &self.dir)
            .field("info", &self.info)
            .finish()
    }
}

/// One audit log line.
#[derive(Clone, Debug, Serialize)]
pub struct AuditLine {
    /// When it was written (wall clock, unix milliseconds).
    pub at_ms: i64,
    /// What happened.
    pub message: String,
}

impl Server {
    /// Opens (creating on first use) the server in `dir`; a new server gets a fresh id.
    pub fn open(dir: &Path) -> Result<Server, ProtectError> {
        let db = StateDb::open(dir)?;
        let info = match db.task(SERVER_ID)? {
            Some(t) => serde_json::from_str(&t.state).map_err(|e| bad(dir, SERVER_ID, e))?,
            None => {
                let seed = format!(
                    "{}|{}|{:?}",
                    dir.display(),
                    std::process::id(),
                    std::time::SystemTime::now()
                );
                let id = blake3::hash(seed.as_bytes()).to_hex()[..16].to_string();
                let info = ServerInfo {
                    id,
                    settings: Settings::default(),
                };
                db.put_task(SERVER_ID, "protect.server", &to_json(&info))?;
                db.log(
                    None,
                    Some(AUDIT),
                    Level::Info,
                    &format!("server {} created in {}", info.id, dir.display()),
                )?;
                info
            }
        };
        Ok(Server {
            db,
            dir: dir.to_path_buf(),
            info,
        })
    }

    /// The server's id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id and settings.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Changes a setting.
    pub fn set_setting(&mut self, name: &str, value: &str) -> Result<(), ProtectError> {
        self.info
            .settings
            .set(name, value)
            .map_err(ProtectError::Invalid)?;
        self.db
            .put_task(SERVER_ID, "protect.server", &to_json(&self.info))?;
        self.audit(&format!("setting {name} set to {value}"))
    }

    /// Appends a line to the audit log.
    pub fn audit(&self, message: &str) -> Result<(), ProtectError> {
        Ok(self.db.log(None, Some(AUDIT), Level::Info, message)?)
    }

    /// The latest `limit` audit lines, oldest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditLine>, ProtectError> {
        Ok(self
            .db
            .logs(Some(AUDIT), limit)?
            .into_iter()
            .map(|l| AuditLine {
                at_ms: l.at,
                message: l.message,
            })
            .collect())
    }

    fn get<T: DeserializeOwned>(&self, kind: &str, name: &str) -> Result<Option<T>, ProtectError> {
        let id = format!("{kind}:{name}");
        match self.db.task(&id)? {
            None => Ok(None),
            Some(t) => serde_json::from_str(&t.state)
                .map(Some)
                .map_err(|e| bad(&self.dir, &id, e)),
        }
    }

    fn all<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>, ProtectError> {
        self.db
            .tasks(Some(&format!("protect.{kind}")))?
            .into_iter()
            .map(|t| serde_json::from_str(&t.state).map_err(|e| bad(&self.dir, &t.id, e)))
            .collect()
    }

    fn put<T: Serialize>(&self, kind: &str, name: &str, value: &T) -> Result<(), ProtectError> {
        Ok(self.db.put_task(
            &format!("{kind}:{name}"),
            &format!("protect.{kind}"),
            &to_json(value),
        )?)
    }

    fn delete(&self, kind: &str, name: &str) -> Result<bool, ProtectError> {
        Ok(self.db.delete_task(&format!("{kind}:{name}"))?)
    }

    /// Registers (or replaces) a host.
    pub fn put_host(&self, host: &Host) -> Result<(), ProtectError> {
        self.put("host", &host.name, host)?;
        self.audit(&format!("host {} registered at {}", host.name, host.url))
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Result<Host, ProtectError> {
        self.get("host", name)?.ok_or_else(|| {
            ProtectError::NotFound(format!(
                "no host {name:?} on this server; add it with `haul protect host add {name} \
                 quic://HOST:PORT --fingerprint ... --token-file ...`"
            ))
        })
    }

    /// Every host, by name.
    pub fn hosts(&self) -> Result<Vec<Host>, ProtectError> {
        self.all("host")
    }

    /// Adds (or replaces) a policy.
    pub fn put_policy(&self, policy: &Policy) -> Result<(), ProtectError> {
        self.put("policy", &policy.name, policy)?;
        self.audit(&format!(
            "policy {} stored: {}",
            policy.name,
            to_json(policy)
        ))
    }

    /// A policy by name.
    pub fn policy(&self, name: &str) -> Result<Policy, ProtectError> {
        self.get("policy", name)?.ok_or_else(|| {
            ProtectError::NotFound(format!(
                "no policy {name:?} on this server; create it with `haul protect policy add`"
            ))
        })
    }

    /// A policy by name, if there is one.
    pub fn find_policy(&self, name: &str) -> Result<Option<Policy>, ProtectError> {
        self.get("policy", name)
    }

    /// Every policy, by name.
    pub fn policies(&self) -> Result<Vec<Policy>, ProtectError> {
        self.all("policy")
    }

    /// Stores a dataset.
    pub fn put_dataset(&self, dataset: &Dataset) -> Result<(), ProtectError> {
        self.put("dataset", &dataset.name, dataset)
    }

    /// A dataset by name.
    pub fn dataset(&self, name: &str) -> Result<Dataset, ProtectError> {
        self.get("dataset", name)?.ok_or_else(|| {
            ProtectError::NotFound(format!(
                "no dataset {name:?} on this server; create it with `haul protect dataset \
                 create {name} --policy P`"
            ))
        })
    }

    /// Every dataset, by name.
    pub fn datasets(&self) -> Result<Vec<Dataset>, ProtectError> {
        self.all("dataset")
    }

    /// Removes a dataset record.
    pub fn delete_dataset(&self, name: &str) -> Result<bool, ProtectError> {
        self.delete("dataset", name)
    }

    /// Stores an owned relationship.
    pub fn put_relationship(&self, rel: &Relationship) -> Result<(), ProtectError> {
        self.put("relationship", &rel.name, rel)
    }

    /// An owned relationship by name, if this server owns it.
    pub fn find_relationship(&self, name: &str) -> Result<Option<Relationship>, ProtectError> {
        self.get("relationship", name)
    }

    /// Every owned relationship, by name.
    pub fn relationships(&self) -> Result<Vec<Relationship>, ProtectError> {
        self.all("relationship")
    }

    /// Forgets an owned relationship.
    pub fn delete_relationship(&self, name: &str) -> Result<bool, ProtectError> {
        self.delete("relationship", name)
    }

    /// Records a backup this server made.
    pub fn put_backup(&self, backup: &Backup) -> Result<(), ProtectError> {
        self.put("backup", &format!("{}:{}", backup.host, backup.id), backup)
    }

    /// Every backup this server made and has not expired, oldest first.
    pub fn backups(&self) -> Result<Vec<Backup>, ProtectError> {
        let mut all: Vec<Backup> = self.all("backup")?;
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    /// Forgets an expired backup.
    pub fn delete_backup(&self, backup: &Backup) -> Result<bool, ProtectError> {
        self.delete("backup", &format!("{}:{}", backup.host, backup.id))
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize")
}

fn bad(dir: &Path, id: &str, e: serde_json::Error) -> ProtectError {
    ProtectError::Invalid(format!(
        "the record {id} in {} is not what this version of haul wrote ({e}); it was edited \
         by hand or by a newer haul",
        dir.display()
    ))
}
