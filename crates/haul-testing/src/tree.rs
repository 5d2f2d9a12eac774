//! Building and comparing trees.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng, rngs::StdRng};

/// Builds a source tree under a directory.
#[derive(Debug)]
pub struct TreeBuilder {
    root: PathBuf,
    rng: StdRng,
}

impl TreeBuilder {
    /// A builder writing under `root` (created), with content drawn from `seed`.
    pub fn new(root: &Path, seed: u64) -> Self {
        fs::create_dir_all(root).expect("create tree root");
        TreeBuilder {
            root: root.to_path_buf(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, rel: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel))
    }

    /// A file of `len` random bytes (parents created). Returns its path.
    pub fn file(&mut self, rel: impl AsRef<[u8]>, len: usize) -> PathBuf {
        let path = self.path(rel.as_ref());
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parents");
        }
        let mut data = vec![0u8; len];
        self.rng.fill_bytes(&mut data);
        fs::write(&path, &data).expect("write file");
        path
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, rel: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel.as_ref());
        fs::create_dir_all(&path).expect("create dir");
        path
    }

    /// A symlink to `target` (not checked).
    pub fn symlink(&mut self, rel: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel.as_ref());
        symlink(OsStr::from_bytes(target.as_ref()), &path).expect("create symlink");
        path
    }

    /// A sparse file of `len` bytes holding random data only in `data` (offset, length) runs.
    pub fn sparse(&mut self, rel: impl AsRef<[u8]>, len: u64, data: &[(u64, usize)]) -> PathBuf {
        use std::os::unix::fs::FileExt;
        let path = self.path(rel.as_ref());
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parents");
        }
        let file = fs::File::create(&path).expect("create sparse file");
        file.set_len(len).expect("set_len");
        for &(offset, n) in data {
            let mut buf = vec![0u8; n];
            self.rng.fill_bytes(&mut buf);
            file.write_all_at(&buf, offset).expect("write sparse data");
        }
        path
    }

    /// Sets permission bits.
    pub fn mode(&mut self, rel: impl AsRef<[u8]>, mode: u32) {
        fs::set_permissions(self.path(rel.as_ref()), fs::Permissions::from_mode(mode))
            .expect("chmod");
    }

    /// Sets the modification time (seconds, nanoseconds) without following symlinks.
    pub fn mtime(&mut self, rel: impl AsRef<[u8]>, sec: i64, nsec: u32) {
        let path = self.path(rel.as_ref());
        let t = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: sec,
                tv_nsec: nsec.into(),
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: sec,
                tv_nsec: nsec.into(),
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &path,
            &t,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .expect("utimensat");
    }
}

/// Waits until the receiver whose root is `root` holds at least `bytes` of partial data, then
/// kills `child` with SIGKILL. Returns the partial bytes seen at the kill. Panics if the
/// transfer ends first or makes no progress for two minutes.
pub fn kill_when(child: &mut std::process::Child, root: &Path, bytes: u64) -> u64 {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = partial_bytes(root);
        if seen >= bytes {
            child.kill().expect("kill -9");
            let _ = child.wait();
            return seen;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the transfer ended ({status}) before it could be killed at {bytes} bytes");
        }
        assert!(Instant::now() < deadline, "no progress to kill at");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Data bytes on disk in a receiver's partial files under `root` (its resume state).
pub fn partial_bytes(root: &Path) -> u64 {
    fs::read_dir(root.join(".haul/partial"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".data"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Blocks (512-byte units) a file occupies on disk.
pub fn sparse_blocks(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").blocks()
}

/// Asserts that `copy` holds exactly what `source` holds: the same names, kinds, file
/// contents, permission bits, modification times (to the nanosecond) and link targets. A
/// top-level `.haul` in `copy` (receiver state) is ignored. Directory mtimes are compared too.
pub fn assert_same_tree(source: &Path, copy: &Path) {
    let mut problems = Vec::new();
    compare(source, copy, true, &mut problems);
    assert!(
        problems.is_empty(),
        "trees differ:\n{}",
        problems.join("\n")
    );
}

fn compare(a: &Path, b: &Path, top: bool, problems: &mut Vec<String>) {
    let (ma, mb) = match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(ma), Ok(mb)) => (ma, mb),
        (Ok(_), Err(e)) => return problems.push(format!("{}: missing in copy ({e})", b.display())),
        (Err(e), _) => return problems.push(format!("{}: unreadable ({e})", a.display())),
    };
    let (ta, tb) = (ma.file_type(), mb.file_type());
    if ta.is_dir() != tb.is_dir()
        || ta.is_symlink() != tb.is_symlink()
        || ta.is_file() != tb.is_file()
    {
        return problems.push(format!("{}: kind differs", b.display()));
    }
    if !ta.is_symlink() && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
        problems.push(format!(
            "{}: mode {:o} != {:o}",
            b.display(),
            mb.mode() & 0o7777,
            ma.mode() & 0o7777
        ));
    }
    if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        problems.push(format!(
            "{}: mtime {}.{:09} != {}.{:09}",
            b.display(),
            mb.mtime(),
            mb.mtime_nsec(),
            ma.mtime(),
            ma.mtime_nsec()
        ));
    }
    if ta.is_symlink() {
        if fs::read_link(a).ok() != fs::read_link(b).ok() {
            problems.push(format!("{}: link target differs", b.display()));
        }
    } else if ta.is_file() {
        if ma.len() != mb.len() {
            problems.push(format!(
                "{}: size {} != {}",
                b.display(),
                mb.len(),
                ma.len()
            ));
        } else if !same_content(a, b) {
            problems.push(format!("{}: content differs", b.display()));
        }
    } else if ta.is_dir() {
        let names = |p: &Path, skip_state: bool| -> Vec<std::ffi::OsString> {
            let mut v: Vec<_> = fs::read_dir(p)
                .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
                .unwrap_or_default();
            if skip_state {
                v.retain(|n| n != ".haul");
            }
            v.sort();
            v
        };
        let (na, nb) = (names(a, false), names(b, top));
        if na != nb {
            problems.push(format!("{}: entries {:?} != {:?}", b.display(), nb, na));
        }
        for name in na.iter().filter(|n| nb.contains(n)) {
            compare(&a.join(name), &b.join(name), false, problems);
        }
    }
}

fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut fa), Ok(mut fb)) = (fs::File::open(a), fs::File::open(b)) else {
        return false;
    };
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
    fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        n
    }
}
