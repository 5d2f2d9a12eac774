//! A synthetic Reload backup area: `DIR/<TAG>/<po>/` for N dated backups, each a post office
//! with `offiles/fd0`..`fd7f` full of small BLOB files (85-90% of the bytes), `ofuser/`,
//! `ofmsg/`, `ofwork/`, `ofviews/`, `gwdms/` and the top-level databases, plus
//! `DIR/<TAG>/backup.json` with the backup's start and completion time (Reload's backup
//! stats). Later backups keep most BLOBs of the one before, add new mail and lose a little
//! (deleted mail); some databases change from one backup to the next. Everything (names,
//! sizes, contents, mtimes) follows from the seed, so two runs make identical trees.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::GwError;
use crate::clock;

/// What to generate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleSpec {
    /// Bytes of one backup's post office, about.
    pub size: u64,
    /// Dated backups, oldest first.
    pub backups: u32,
    /// The seed everything follows from.
    pub seed: u64,
    /// BLOB files in the first backup (default: one per 16 KiB of BLOB bytes).
    pub blobs: Option<u64>,
    /// The post office directory's name.
    pub po: String,
}

impl Default for SampleSpec {
    fn default() -> Self {
        SampleSpec {
            size: 32 << 20,
            backups: 3,
            seed: 1,
            blobs: None,
            po: "po1".into(),
        }
    }
}

/// What Reload records of a backup (`<TAG>/backup.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The tag (`TUEMAY28`).
    pub tag: String,
    /// When the backup started, unix seconds.
    pub started: i64,
    /// When it completed, unix seconds.
    pub completed: i64,
    /// How long it took, seconds.
    pub duration_s: f64,
}

/// One generated backup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleBackup {
    /// Its record.
    pub info: BackupInfo,
    /// The post office directory.
    pub path: PathBuf,
    /// BLOB files in `offiles/`.
    pub blobs: u64,
    /// Bytes in them.
    pub blob_bytes: u64,
    /// Files in all.
    pub files: u64,
    /// Bytes in all.
    pub bytes: u64,
}

/// What [`generate`] made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleReport {
    /// The backup area.
    pub dir: PathBuf,
    /// The backups, oldest first.
    pub backups: Vec<SampleBackup>,
}

/// The first backup's day: Tuesday, 28 May 2024 (the article's `TUEMAY28`).
const FIRST_DAY: (i64, u32, u32) = (2024, 5, 28);
/// BLOB directories: `fd0` .. `fd7f`.
const BLOB_DIRS: u64 = 128;
/// Of the BLOBs of one backup, those gone in the next (per mille) and those new (per mille).
const LOST_PER_MILLE: u64 = 20;
const NEW_PER_MILLE: u64 = 60;

/// SplitMix64: a small, fast generator whose output never changes between releases.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn key(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix(seed), |acc, p| mix(acc ^ *p))
}

fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A unit interval value from a key.
fn unit(k: u64) -> f64 {
    (k >> 11) as f64 / (1u64 << 53) as f64
}

/// The unscaled size of BLOB `id`: mostly small (a few KiB), some tens of KiB, a few large.
fn raw_blob_size(seed: u64, id: u64) -> f64 {
    let u = unit(key(seed, &[1, id]));
    let v = unit(key(seed, &[2, id]));
    let (lo, hi): (f64, f64) = if u < 0.90 {
        (512.0, 16_384.0)
    } else if u < 0.99 {
        (16_384.0, 262_144.0)
    } else {
        (262_144.0, 6_291_456.0)
    };
    lo * (hi / lo).powf(v)
}

/// Writes `len` bytes derived from `k` to `path` with mtime `mtime` (unix seconds).
fn write_file(path: &Path, k: u64, len: u64, mtime: i64) -> Result<(), GwError> {
    let io = |e: std::io::Error| GwError::io(path, "write the sample file", e);
    let mut file = std::fs::File::create(path).map_err(io)?;
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut state = mix(k);
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for word in buf[..n].chunks_mut(8) {
            state = mix(state);
            let bytes = state.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        file.write_all(&buf[..n]).map_err(io)?;
        left -= n as u64;
    }
    file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64))
        .map_err(io)?;
    Ok(())
}

/// A database file of the post office and its share of the non-BLOB bytes (per mille).
struct DbFile {
    rel: String,
    share: u64,
}

/// The post office's files besides `offiles/`, with their shares of the non-BLOB bytes.
fn db_files() -> Vec<DbFile> {
    let mut files = Vec::new();
    let mut add = |rel: String, share: u64| files.push(DbFile { rel, share });
    for user in 0..16 {
        add(format!("ofuser/user{:03}.db", user * 7 + 11), 22);
    }
    add("ofuser/index/guardian.idx".into(), 8);
    for msg in 0..25 {
        add(format!("ofmsg/msg{msg}.db"), 18);
    }
    add("ofmsg/guardian.db".into(), 0);
    add("ofwork/ofdirect/direct.db".into(), 20);
    add("ofwork/ofdirect/ngwguard.wrk".into(), 10);
    add("ofwork/upload/pending.tmp".into(), 5);
    add("ofviews/win/std.vew".into(), 5);
    add("ofviews/win/custom.vew".into(), 5);
    add("ofviews/gwviews.ini".into(), 1);
    add("gwdms/dmsh.db".into(), 25);
    add("gwdms/lib0001/dmsd0001.db".into(), 30);
    add("gwdms/lib0001/docs/dms00001.db".into(), 15);
    add("wphost.db".into(), 18);
    add("ngwguard.db".into(), 20);
    add("ngwguard.rfl".into(), 8);
    add("ngwguard.fbk".into(), 8);
    add("ngwguard.dc".into(), 1);
    add("ngwcheck.db".into(), 2);
    files
}

/// The version of database `rel` in backup `b`: how many times it changed up to then (about
/// half of the databases change between two backups).
fn db_version(seed: u64, rel: &str, b: u32) -> u64 {
    (1..=b)
        .filter(|&i| unit(key(seed, &[3, name_key(rel), u64::from(i)])) < 0.5)
        .count() as u64
}

/// Generates the sample backup area in `dir` (created if missing). Existing files of the same
/// names are replaced; other files are left alone.
pub fn generate(dir: &Path, spec: &SampleSpec) -> Result<SampleReport, GwError> {
    if spec.backups == 0 {
        return Err(GwError::Invalid("--backups must be at least 1".into()));
    }
    let seed = spec.seed;
    let blob_target = spec.size / 100 * 87;
    let other_target = spec.size - blob_target;
    let first_count = spec.blobs.unwrap_or((blob_target / 16_384).max(16)).max(1);
    // One scale for every backup, so a BLOB has the same size wherever it appears.
    let raw_total: f64 = (0..first_count).map(|id| raw_blob_size(seed, id)).sum();
    let scale = blob_target as f64 / raw_total.max(1.0);
    let blob_size = |id: u64| ((raw_blob_size(seed, id) * scale) as u64).max(64);
    let base_day = days_from(FIRST_DAY);
    // BLOBs arrive over the weeks before the first backup, then day by day.
    let blob_mtime = |id: u64| (base_day - 30) * 86_400 + (id as i64 * 37) % (30 * 86_400);

    let mut live: Vec<u64> = (0..first_count).collect();
    let mut next_id = first_count;
    let mut report = SampleReport {
        dir: dir.to_path_buf(),
        backups: Vec::new(),
    };
    for b in 0..spec.backups {
        if b > 0 {
            live.retain(|&id| key(seed, &[4, u64::from(b), id]) % 1000 >= LOST_PER_MILLE);
            let new = (first_count * NEW_PER_MILLE / 1000).max(1);
            live.extend(next_id..next_id + new);
            next_id += new;
        }
        let day = base_day + i64::from(b);
        let tag = clock::reload_tag(day);
        let po = dir.join(&tag).join(&spec.po);
        let offiles = po.join("offiles");
        for d in 0..BLOB_DIRS {
            let sub = offiles.join(format!("fd{d:x}"));
            std::fs::create_dir_all(&sub).map_err(|e| GwError::io(&sub, "create", e))?;
        }
        let (mut files, mut bytes, mut blob_bytes) = (0u64, 0u64, 0u64);
        for &id in &live {
            let path = offiles
                .join(format!("fd{:x}", id % BLOB_DIRS))
                .join(blob_name(seed, id));
            let len = blob_size(id);
            let mtime = if id < first_count {
                blob_mtime(id)
            } else {
                // New mail: during the day before this backup.
                (day - 1) * 86_400 + 3600 + (id as i64 % 80_000)
            };
            write_file(&path, key(seed, &[5, id]), len, mtime)?;
            files += 1;
            bytes += len;
            blob_bytes += len;
        }
        let dbs = db_files();
        let shares: u64 = dbs.iter().map(|f| f.share).sum();
        for db in &dbs {
            let path = po.join(&db.rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| GwError::io(parent, "create", e))?;
            }
            let version = db_version(seed, &db.rel, b);
            let len = other_target * db.share / shares.max(1);
            // A database keeps its size; its contents and mtime follow its version.
            let mtime = (base_day - 1) * 86_400 + version as i64 * 86_400 + 7200;
            write_file(
                &path,
                key(seed, &[6, name_key(&db.rel), version]),
                len,
                mtime,
            )?;
            files += 1;
            bytes += len;
        }
        // Reload's backup stats: a backup of the night, longer for a larger post office.
        let started = day * 86_400 + 22 * 3600;
        let duration_s = (1800 + bytes / (8 << 20) + u64::from(b) * 120) as f64;
        let info = BackupInfo {
            tag: tag.clone(),
            started,
            completed: started + duration_s as i64,
            duration_s,
        };
        let info_path = dir.join(&tag).join(crate::backup::INFO_FILE);
        let text = serde_json::to_string_pretty(&info).expect("backup info serializes");
        std::fs::write(&info_path, text).map_err(|e| GwError::io(&info_path, "write", e))?;
        report.backups.push(SampleBackup {
            info,
            path: po,
            blobs: live.len() as u64,
            blob_bytes,
            files,
            bytes,
        });
    }
    Ok(report)
}

/// A BLOB's file name, unique per id (an odd multiplier is a bijection on 32 bits).
fn blob_name(seed: u64, id: u64) -> String {
    format!(
        "{:08x}.000",
        (id as u32).wrapping_mul(0x9E37_79B1) ^ (mix(seed) as u32)
    )
}

fn days_from((y, m, d): (i64, u32, u32)) -> i64 {
    clock::days_from_civil(y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) -> Vec<(String, u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                    let data = std::fs::read(e.path()).unwrap();
                    out.push((rel, data.len() as u64, data));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_sample_is_deterministic_and_shaped_like_a_post_office() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let spec = SampleSpec {
            size: 2 << 20,
            backups: 3,
            seed: 7,
            ..SampleSpec::default()
        };
        let report = generate(a.path(), &spec).unwrap();
        generate(b.path(), &spec).unwrap();
        assert_eq!(tree(a.path()), tree(b.path()));
        let tags: Vec<_> = report.backups.iter().map(|b| b.info.tag.as_str()).collect();
        assert_eq!(tags, ["TUEMAY28", "WEDMAY29", "THUMAY30"]);
        for backup in &report.backups {
            let share = backup.blob_bytes as f64 / backup.bytes as f64;
            assert!((0.84..=0.91).contains(&share), "BLOB share {share}");
            for dir in [
                "ofuser",
                "ofmsg",
                "ofwork",
                "ofviews",
                "gwdms",
                "offiles/fd7f",
            ] {
                assert!(backup.path.join(dir).is_dir(), "{dir}");
            }
            assert!(backup.path.join("wphost.db").is_file());
        }
        // Later backups share most BLOBs, gain some, lose a few.
        let blobs = |i: usize| -> std::collections::BTreeSet<String> {
            tree(&report.backups[i].path.join("offiles"))
                .into_iter()
                .map(|(rel, _, _)| rel)
                .collect()
        };
        let (first, second) = (blobs(0), blobs(1));
        let shared = first.intersection(&second).count();
        assert!(shared * 10 > first.len() * 9, "{shared} of {}", first.len());
        assert!(second.difference(&first).count() > 0);
        assert!(first.difference(&second).count() > 0);
    }
}
