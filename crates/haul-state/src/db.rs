//! [`StateDb`]: opening, checking and migrating the database file; where it lives.

use std::ffi::OsString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};
use rustix::fs::FlockOperation;
use rustix::io::Errno;

use crate::error::StateError;
use crate::schema::{self, Migrated};

/// How long a statement waits for another connection's lock before [`StateError::Busy`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The database's file name inside the state directory.
pub const DB_FILE_NAME: &str = "state.sqlite3";

/// The lock file that serializes [`StateDb::open`] in one state directory.
const OPEN_LOCK_NAME: &str = "open.lock";

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// haul's state database: run history, log and workflow tasks, in one SQLite file in WAL mode.
///
/// `Send + Sync`: the connection sits behind a mutex, so threads share one handle and every
/// method takes `&self`. Several handles and several processes on one file are safe too:
/// SQLite's WAL lets readers go on while one writer writes, each write is one statement or
/// one immediate transaction, and a writer waits up to [`BUSY_TIMEOUT`] for another
/// before [`StateError::Busy`].
#[derive(Debug)]
pub struct StateDb {
    conn: Mutex<Connection>,
    path: PathBuf,
    busy_timeout: Duration,
}

impl StateDb {
    /// Opens `dir/state.sqlite3`, creating `dir` (mode 0700) and the database as needed, and
    /// brings its schema to [`schema::VERSION`].
    ///
    /// An existing file is checked before anything is written to it: a file that is not a
    /// SQLite database or fails `PRAGMA quick_check` gives [`StateError::Corrupt`], one with a
    /// newer schema [`StateError::Newer`]; both leave the file's bytes as they were.
    pub fn open(dir: &Path) -> Result<StateDb, StateError> {
        StateDb::open_with_busy_timeout(dir, BUSY_TIMEOUT)
    }

    /// [`StateDb::open`] with another busy timeout than [`BUSY_TIMEOUT`]: how long each
    /// statement waits for another connection's write lock before [`StateError::Busy`].
    pub fn open_with_busy_timeout(
        dir: &Path,
        busy_timeout: Duration,
    ) -> Result<StateDb, StateError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StateError::io(dir, "create the state directory", e))?;
        let path = dir.join(DB_FILE_NAME);
        let _serialized = lock_for_open(dir, &path, busy_timeout)?;
        check_existing(&path, busy_timeout)?;

        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| StateError::sqlite(&path, busy_timeout, "open the database", e))?;
        let err = |e| StateError::sqlite(&path, busy_timeout, "set up the database", e);
        conn.busy_timeout(busy_timeout).map_err(err)?;
        // WAL: readers never wait for the writer, and a writer's commit is one append.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StateError::NoWal { path, mode });
        }
        // FULL: a workflow task stored before a power cut is there after it. Writes are a few
        // per run, so the fsync per commit costs nothing that matters.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(err)?;
        let migrated = schema::migrate(&mut conn)
            .map_err(|e| StateError::sqlite(&path, busy_timeout, "migrate the schema", e))?;
        match migrated {
            Migrated::Current => {}
            Migrated::Newer(found) => {
                return Err(StateError::Newer {
                    path,
                    found,
                    supported: schema::VERSION,
                });
            }
        }
        Ok(StateDb {
            conn: Mutex::new(conn),
            path,
            busy_timeout,
        })
    }

    /// Opens the database in [`default_dir`].
    pub fn open_default() -> Result<StateDb, StateError> {
        StateDb::open(&default_dir()?)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection. A thread that panicked while holding it cannot have left it in a
    /// transaction (rusqlite rolls back on drop), so a poisoned lock is taken over.
    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wraps a SQLite error with this database's path.
    pub(crate) fn err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |e| StateError::sqlite(&self.path, self.busy_timeout, op, e)
    }
}

/// Takes `dir/open.lock` for the rest of [`StateDb::open`]. Why: SQLite is safe for any
/// number of connections once a database is in WAL mode, but not while one process creates
/// the file and switches it from the rollback journal to WAL and another opens it (seen
/// here: a read-only check finding the creator's journal "hot", a second switch deleting the
/// journal the first already removed, a busy error that skips the busy handler). Serializing
/// only the opens removes that window; afterwards SQLite's own locking is enough.
fn lock_for_open(dir: &Path, db: &Path, busy_timeout: Duration) -> Result<File, StateError> {
    let lock_path = dir.join(OPEN_LOCK_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| StateError::io(&lock_path, "open the state directory's lock", e))?;
    let deadline = Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            // Another open takes milliseconds; a holder that dies releases the lock.
            Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(Errno::WOULDBLOCK) => {
                return Err(StateError::Busy {
                    path: db.to_path_buf(),
                    timeout: busy_timeout,
                });
            }
            Err(e) => {
                return Err(StateError::io(
                    &lock_path,
                    "lock the state directory",
                    e.into(),
                ));
            }
        }
    }
}

/// Checks an existing database file without writing to it: the header, then (through a
/// read-only connection) the schema version and `PRAGMA quick_check`. A missing or empty file
/// passes: SQLite makes a new database of it.
fn check_existing(path: &Path, busy_timeout: Duration) -> Result<(), StateError> {
    let mut head = Vec::with_capacity(SQLITE_MAGIC.len());
    match File::open(path) {
        Ok(file) => file
            .take(SQLITE_MAGIC.len() as u64)
            .read_to_end(&mut head)
            .map_err(|e| StateError::io(path, "read the state database", e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StateError::io(path, "open the state database", e)),
    };
    if head.is_empty() {
        return Ok(());
    }
    if head != SQLITE_MAGIC {
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            detail: "the file does not start with the SQLite header".into(),
        });
    }

    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StateError::sqlite(path, busy_timeout, "open the database to check it", e))?;
    let err = |e| StateError::sqlite(path, busy_timeout, "check the database", e);
    conn.busy_timeout(busy_timeout).map_err(err)?;
    let found = schema::user_version(&conn).map_err(err)?;
    if found > schema::VERSION {
        return Err(StateError::Newer {
            path: path.to_path_buf(),
            found,
            supported: schema::VERSION,
        });
    }
    // quick_check reads every page but skips the index cross-checks: milliseconds for a
    // history, and it catches truncation and overwritten pages.
    let mut stmt = conn.prepare("PRAGMA quick_check").map_err(err)?;
    let problems = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if problems != ["ok"] {
        // One row may hold several lines; keep the message to one line and a few problems.
        let lines = problems.iter().flat_map(|p| p.lines()).map(str::trim);
        let mut detail = lines
            .filter(|l| !l.is_empty())
            .take(3)
            .collect::<Vec<_>>()
            .join("; ");
        if detail.is_empty() {
            detail = "quick_check returned nothing".into();
        }
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("quick_check: {detail}"),
        });
    }
    Ok(())
}

/// The state directory: `$HAUL_STATE_DIR` if set, else `$XDG_STATE_HOME/haul`, else
/// `$HOME/.local/state/haul`. Empty values count as unset, and so does a relative
/// `XDG_STATE_HOME` (the XDG spec says to ignore it).
pub fn default_dir() -> Result<PathBuf, StateError> {
    default_dir_from(|name| std::env::var_os(name))
}

/// [`default_dir`] with the environment looked up through `var`, for tests and callers that
/// carry their own environment.
pub fn default_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, StateError> {
    let get = |name| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = get("HAUL_STATE_DIR") {
        return Ok(dir);
    }
    if let Some(xdg) = get("XDG_STATE_HOME").filter(|p| p.is_absolute()) {
        return Ok(xdg.join("haul"));
    }
    if let Some(home) = get("HOME") {
        return Ok(home.join(".local/state/haul"));
    }
    Err(StateError::NoStateDir)
}

/// Now, in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
