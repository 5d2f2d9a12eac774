//! Writing `session` inputs byte by byte, for the seed corpus.
//!
//! `arbitrary` has no serializer, so this mirrors the layout its derive reads (arbitrary 1.x):
//! an enum variant is a little-endian `u32` `v` picking variant `(v * count) >> 32`; integers
//! are little endian; `bool` and `Option`'s tag are one byte; struct fields come in order.
//! [`Blob`] is our own length byte plus bytes. `examples/gen_seeds.rs` checks that
//! [`session::parse`](crate::session::parse) reads every seed back to the ops it was made from,
//! so a change in `arbitrary`'s layout is caught rather than silently producing junk seeds.

use crate::session::{
    Blob, ChunkSizeSel, ClientMsg, HelloArgs, IdRef, IdSel, IndexSel, KindSel, LenSel, Op, SizeSel,
    StrayMsg, VersionSel, WelcomeArgs,
};

/// Appends the arbitrary-layout bytes of a value.
pub trait Encode {
    /// Appends `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// The discriminant bytes choosing variant `index` of `count`.
fn variant(out: &mut Vec<u8>, index: u64, count: u64) {
    let v = u32::try_from((index << 32).div_ceil(count)).unwrap_or(u32::MAX);
    out.extend_from_slice(&v.to_le_bytes());
}

macro_rules! encode_le {
    ($($ty:ty),*) => {$(
        impl Encode for $ty {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
encode_le!(u8, u16, u32, u64, i8, i64);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.is_some().encode(out);
        if let Some(v) = self {
            v.encode(out);
        }
    }
}

impl Encode for Blob {
    fn encode(&self, out: &mut Vec<u8>) {
        let len = u8::try_from(self.0.len()).unwrap_or(u8::MAX);
        out.push(len);
        out.extend_from_slice(&self.0[..usize::from(len)]);
    }
}

/// Encodes an enum value: `$index` of `$count`, then the listed fields.
macro_rules! enc {
    ($out:expr, $index:expr, $count:expr $(, $field:expr)*) => {{
        variant($out, $index, $count);
        $($field.encode($out);)*
    }};
}

impl Encode for HelloArgs {
    fn encode(&self, out: &mut Vec<u8>) {
        let HelloArgs {
            version,
            token,
            dest,
            chunk_size,
            flags,
            rename_aside,
        } = self;
        version.encode(out);
        token.encode(out);
        dest.encode(out);
        chunk_size.encode(out);
        flags.encode(out);
        rename_aside.encode(out);
    }
}

impl Encode for WelcomeArgs {
    fn encode(&self, out: &mut Vec<u8>) {
        let WelcomeArgs {
            version,
            session,
            free_bytes,
            history_bytes,
            history_ms,
            renamed,
        } = self;
        version.encode(out);
        session.encode(out);
        free_bytes.encode(out);
        history_bytes.encode(out);
        history_ms.encode(out);
        renamed.encode(out);
    }
}

impl Encode for VersionSel {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            VersionSel::Current => enc!(out, 0, 2),
            VersionSel::Raw(v) => enc!(out, 1, 2, v),
        }
    }
}

impl Encode for ChunkSizeSel {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ChunkSizeSel::Shift(n) => enc!(out, 0, 2, n),
            ChunkSizeSel::Raw(v) => enc!(out, 1, 2, v),
        }
    }
}

impl Encode for IdSel {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            IdSel::Next => enc!(out, 0, 3),
            IdSel::Skip(n) => enc!(out, 1, 3, n),
            IdSel::Raw(id) => enc!(out, 2, 3, id),
        }
    }
}

impl Encode for IdRef {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            IdRef::Announced(n) => enc!(out, 0, 2, n),
            IdRef::Raw(id) => enc!(out, 1, 2, id),
        }
    }
}

impl Encode for SizeSel {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SizeSel::Bytes(n) => enc!(out, 0, 3, n),
            SizeSel::Chunks { chunks, extra } => enc!(out, 1, 3, chunks, extra),
            SizeSel::Raw(n) => enc!(out, 2, 3, n),
        }
    }
}

impl Encode for KindSel {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            KindSel::File => enc!(out, 0, 3),
            KindSel::Dir => enc!(out, 1, 3),
            KindSel::Symlink => enc!(out, 2, 3),
        }
    }
}

impl Encode for IndexSel {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            IndexSel::Nth(n) => enc!(out, 0, 4, n),
            IndexSel::Last => enc!(out, 1, 4),
            IndexSel::Past => enc!(out, 2, 4),
            IndexSel::Raw(i) => enc!(out, 3, 4, i),
        }
    }
}

impl Encode for LenSel {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            LenSel::Exact => enc!(out, 0, 4),
            LenSel::Zero => enc!(out, 1, 4),
            LenSel::Off(d) => enc!(out, 2, 4, d),
            LenSel::Raw(n) => enc!(out, 3, 4, n),
        }
    }
}

impl Encode for StrayMsg {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            StrayMsg::Welcome => enc!(out, 0, 9),
            StrayMsg::Refused => enc!(out, 1, 9),
            StrayMsg::Need(id) => enc!(out, 2, 9, id),
            StrayMsg::Have(id) => enc!(out, 3, 9, id),
            StrayMsg::Installed(id, unchanged) => enc!(out, 4, 9, id, unchanged),
            StrayMsg::Failed(id) => enc!(out, 5, 9, id),
            StrayMsg::Finished => enc!(out, 6, 9),
            StrayMsg::Chunk(id) => enc!(out, 7, 9, id),
            StrayMsg::QuickChecked(id, unchanged) => enc!(out, 8, 9, id, unchanged),
        }
    }
}

impl Encode for ClientMsg {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ClientMsg::Hello(args) => enc!(out, 0, 8, args),
            ClientMsg::Entry {
                id,
                kind,
                path,
                size,
                mode,
                mtime_sec,
                mtime_nsec,
                link_target,
            } => {
                enc!(
                    out,
                    1,
                    8,
                    id,
                    kind,
                    path,
                    size,
                    mode,
                    mtime_sec,
                    mtime_nsec,
                    link_target
                )
            }
            ClientMsg::EndOfEntries => enc!(out, 2, 8),
            ClientMsg::FileDone {
                id,
                hash,
                chunks_sent,
            } => enc!(out, 3, 8, id, hash, chunks_sent),
            ClientMsg::SourceFailed { id, message } => enc!(out, 4, 8, id, message),
            ClientMsg::Abort { message } => enc!(out, 5, 8, message),
            ClientMsg::Stray(stray) => enc!(out, 6, 8, stray),
            ClientMsg::QuickCheck { id, dir, files } => enc!(out, 7, 8, id, dir, files),
        }
    }
}

impl Encode for Op {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Send(msg) => enc!(out, 0, 6, msg),
            Op::Decide(welcome) => enc!(out, 1, 6, welcome),
            Op::Refuse => enc!(out, 2, 6),
            Op::Chunk { id, index, len } => enc!(out, 3, 6, id, index, len),
            Op::Resolve(id) => enc!(out, 4, 6, id),
            Op::Accept { hello, welcome } => enc!(out, 5, 6, hello, welcome),
        }
    }
}

/// A whole `session` input: the `max_outstanding` setup, then the ops.
pub fn session_input(max_outstanding: Option<u8>, ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    max_outstanding.encode(&mut out);
    for op in ops {
        op.encode(&mut out);
    }
    out
}
