//! Where a file's bytes go while it is received: a plain staging file for single-chunk files
//! (cheap, nothing to resume), or a journaled partial for larger ones (survives a kill of
//! either side and is resumed chunk by chunk by the next run).

use haul_proto::Hash;
use haul_store::{Attrs, Partial, RelPath, Root, StagingFile, StoreError};

/// What happens to a target whose file failed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Disposal {
    /// Keep verified data for the next run (full disk, lost connection).
    Keep,
    /// Throw it away (bad data, changed source).
    Discard,
}

pub(crate) enum Target {
    Staging(StagingFile),
    Partial(Partial),
}

impl Target {
    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        match self {
            Target::Staging(f) => f.write_at(offset, data),
            Target::Partial(p) => p.write_at(offset, data),
        }
    }

    /// Whether a write of `len` bytes at `offset` bypasses the page cache in full, so it need
    /// not wait for the file's other writers (see `Slot::writing`).
    pub(crate) fn writes_direct(&self, offset: u64, len: usize) -> bool {
        match self {
            Target::Staging(_) => false,
            Target::Partial(p) => p.writes_direct(offset, len),
        }
    }

    /// Records a verified chunk so the next run need not fetch it again (partials only).
    pub(crate) fn record(&self, index: u64, hash: Hash, len: u64) -> Result<(), StoreError> {
        match self {
            Target::Staging(_) => Ok(()),
            Target::Partial(p) => p.record(index, hash, len),
        }
    }

    pub(crate) fn install(
        self,
        root: &Root,
        rel: &RelPath,
        attrs: &Attrs,
    ) -> Result<(), StoreError> {
        match self {
            Target::Staging(f) => root.install_file(f, rel, attrs),
            Target::Partial(p) => p.install(root, rel, attrs),
        }
    }

    pub(crate) fn dispose(self, disposal: Disposal) {
        match disposal {
            Disposal::Keep => self.keep(),
            Disposal::Discard => self.discard(),
        }
    }

    /// Throws the data away (the file failed in a way a retry must not build on).
    pub(crate) fn discard(self) {
        let _ = match self {
            Target::Staging(f) => f.discard(),
            Target::Partial(p) => p.discard(),
        };
    }

    /// Keeps what is verified for the next run (the run stopped for a reason outside the file:
    /// a full disk, a lost connection). Staging files are not resumable and go.
    pub(crate) fn keep(self) {
        match self {
            Target::Staging(f) => {
                let _ = f.discard();
            }
            Target::Partial(p) => {
                let _ = p.checkpoint();
            }
        }
    }
}
