//! Post office profiles in the state database: a named record of the post office, its backup
//! location and the target, with what the workflow has done for it so far. Stored as the
//! generic task `groupwise:<NAME>` of kind [`PROFILE_KIND`] (its JSON is a [`Profile`]), so an
//! administrator can read it with `sqlite3`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use haul_state::{Level, StateDb};
use serde::{Deserialize, Serialize};

use crate::GwError;

/// The task kind of a profile.
pub const PROFILE_KIND: &str = "groupwise.profile";

/// A post office profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Its name.
    pub name: String,
    /// Reload's backup area (`<backups>/<TAG>/<po>/`).
    pub backups: PathBuf,
    /// The post office directory's name in each backup (`po1`).
    pub po: String,
    /// Where the post office goes: a local path or `quic://HOST:PORT/PATH`.
    pub target: String,
    /// For a remote target: the host's certificate fingerprint (else the known-hosts file).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// For a remote target: the file holding the token (the token itself is never stored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// For a remote target: the known-hosts file, when not the default.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// What the workflow did so far.
    #[serde(default)]
    pub state: ProfileState,
}

/// What the workflow remembers of a profile between runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileState {
    /// The last pre-migration that finished.
    pub last_premigrate: Option<StepRecord>,
    /// The last full migration that finished.
    pub last_migrate: Option<StepRecord>,
    /// A full migration that started and has not finished (killed or failed): the next
    /// `migrate` continues it instead of renaming its fresh copies aside again.
    pub in_progress: Option<InProgress>,
    /// Renamed-aside copies made by full migrations: path (relative to the post office) to
    /// when it was made (unix ms).
    pub asides: BTreeMap<String, i64>,
}

/// A finished step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The backup it copied from.
    pub backup: String,
    /// When it started, unix ms.
    pub started_ms: i64,
    /// When it ended, unix ms.
    pub ended_ms: i64,
    /// Bytes in the files it copied from (the whole step's source).
    pub bytes_total: u64,
    /// Bytes that crossed the network.
    pub bytes_sent: u64,
    /// Files in the source.
    pub files: u64,
    /// Entries it removed from the target.
    pub deleted: u64,
}

impl StepRecord {
    /// How long it took, seconds.
    pub fn duration_s(&self) -> f64 {
        (self.ended_ms - self.started_ms).max(0) as f64 / 1000.0
    }
}

/// A full migration under way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InProgress {
    /// The backup it copies.
    pub backup: String,
    /// When it first started, unix ms.
    pub started_ms: i64,
    /// For each directory to be copied anew: how many aside copies it had before the run
    /// (one more now means the run already renamed it aside).
    pub asides_before: BTreeMap<String, usize>,
    /// Directories the target did not hold before the run: the run makes them fresh, so a
    /// continued run goes on filling them instead of renaming them aside.
    #[serde(default)]
    pub absent_before: Vec<String>,
}

fn task_id(name: &str) -> String {
    format!("groupwise:{name}")
}

/// Checks a profile name: letters, digits, `-`, `_`, `.`.
fn check_name(name: &str) -> Result<(), GwError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(GwError::Invalid(format!(
            "profile name {name:?}: use letters, digits, '-', '_' and '.'"
        )))
    }
}

/// Stores a new profile; refuses a name already taken.
pub fn add(db: &StateDb, profile: &Profile) -> Result<(), GwError> {
    check_name(&profile.name)?;
    if db.task(&task_id(&profile.name))?.is_some() {
        return Err(GwError::Invalid(format!(
            "a profile {:?} exists already; `haul groupwise profile show {}` shows it, \
             `profile set-target` changes its target",
            profile.name, profile.name
        )));
    }
    save(db, profile)?;
    db.log(
        None,
        Some(&profile.name),
        Level::Info,
        &format!(
            "profile created: post office {} from backups in {}, target {}",
            profile.po,
            profile.backups.display(),
            profile.target
        ),
    )?;
    Ok(())
}

/// Stores `profile` (replacing what was stored under its name).
pub fn save(db: &StateDb, profile: &Profile) -> Result<(), GwError> {
    let json = serde_json::to_string(profile).expect("profiles serialize");
    db.put_task(&task_id(&profile.name), PROFILE_KIND, &json)?;
    Ok(())
}

/// The profile `name`.
pub fn get(db: &StateDb, name: &str) -> Result<Profile, GwError> {
    let record = db.task(&task_id(name))?.ok_or_else(|| {
        GwError::NoProfile(format!(
            "no profile {name:?}; `haul groupwise profile list` shows them, `profile add` makes one"
        ))
    })?;
    serde_json::from_str(&record.state).map_err(|e| {
        GwError::Invalid(format!(
            "profile {name:?} in {} is not readable by this build: {e}",
            db.path().display()
        ))
    })
}

/// Every profile, by name.
pub fn list(db: &StateDb) -> Result<Vec<Profile>, GwError> {
    db.tasks(Some(PROFILE_KIND))?
        .iter()
        .map(|t| {
            serde_json::from_str(&t.state)
                .map_err(|e| GwError::Invalid(format!("task {}: {e}", t.id)))
        })
        .collect()
}

/// The post-migration connectivity update: the profile now points at `target` (with its
/// credentials); logged.
pub fn set_target(
    db: &StateDb,
    name: &str,
    target: &str,
    fingerprint: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<Profile, GwError> {
    let mut profile = get(db, name)?;
    let old = std::mem::replace(&mut profile.target, target.to_string());
    if fingerprint.is_some() {
        profile.fingerprint = fingerprint;
    }
    if token_file.is_some() {
        profile.token_file = token_file;
    }
    save(db, &profile)?;
    db.log(
        None,
        Some(name),
        Level::Info,
        &format!("connectivity updated: target {old} -> {target}"),
    )?;
    Ok(profile)
}
