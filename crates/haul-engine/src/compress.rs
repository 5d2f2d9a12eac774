//! Optional zstd compression of chunk data on the wire.
//!
//! The sender's read workers compress a chunk after hashing it, and send the compressed form
//! only when it is at least [`MIN_SAVING_PERCENT`] smaller; the receiver decompresses on its
//! blocking threads before verifying, so the chunk hash always covers the uncompressed bytes
//! and verification does not depend on compression at all.
//!
//! [`Compression::Auto`] (the default) first takes a byte histogram of a few slices of the
//! chunk ([`looks_random`]) and sends random-looking data raw; then, for a chunk longer than
//! 64 KiB, it compresses a small sample spread through the chunk and skips chunks whose
//! sample does not shrink: random or already-compressed data costs a 64 KiB trial per 4 MiB
//! chunk at most, well under what hashing it costs. The sample is
//! spread rather than taken from the front so that a chunk of a sparse file holding a little
//! data and then zeros (extents that do not align to chunk boundaries) is still compressed.
//!
//! Decompression is bounded by the receiver, not the sender: output is capped at the chunk's
//! expected length and the decoder's window at what the largest chunk needs, so a hostile
//! peer cannot make a tiny frame expand into gigabytes.

use std::cell::RefCell;
use std::io;

/// Whether the sender compresses chunk data (`--compress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Compress chunks whose sample shrinks by 10% or more; send raw otherwise.
    #[default]
    Auto,
    /// Try every chunk (still sent raw when compressing saves less than 10%).
    On,
    /// Never compress; the hello does not offer compression.
    Off,
}

/// A compressed chunk is sent only if it saves at least this share of the chunk.
pub const MIN_SAVING_PERCENT: usize = 10;

/// zstd level: 1 is the fastest standard level and still shrinks text 3-4x.
const LEVEL: i32 = 1;
/// Chunks shorter than this are sent raw: a frame's overhead eats most of any saving.
const MIN_LEN: usize = 256;
/// The auto probe: this many slices of `SLICE` bytes, spread evenly from the first byte of a
/// chunk to its last (64 KiB in all).
const SLICES: usize = 8;
const SLICE: usize = 8 << 10;
/// Largest window a chunk can need: 2^26 bytes, the largest chunk size the protocol allows.
const WINDOW_LOG_MAX: u32 = 26;

/// The longest compressed form worth sending for a chunk of `len` bytes.
fn worth_len(len: usize) -> usize {
    len - len * MIN_SAVING_PERCENT / 100
}

/// A read worker's compressor: one zstd context and sample buffer, reused for every chunk.
pub(crate) struct ChunkCompressor {
    ctx: zstd::bulk::Compressor<'static>,
    auto: bool,
    /// The auto probe's slices, gathered into one buffer to compress in one call.
    sample: Vec<u8>,
    /// Where the probe's compressed sample goes (and is discarded).
    scratch: Vec<u8>,
}

impl ChunkCompressor {
    /// A compressor for `mode`; `None` when compression is off (or zstd cannot allocate its
    /// context, in which case chunks simply travel raw).
    pub(crate) fn new(mode: Compression) -> Option<Self> {
        if mode == Compression::Off {
            return None;
        }
        let ctx = match zstd::bulk::Compressor::new(LEVEL) {
            Ok(ctx) => ctx,
            Err(e) => {
                tracing::warn!("cannot set up zstd compression, sending chunks raw: {e}");
                return None;
            }
        };
        Some(ChunkCompressor {
            ctx,
            auto: mode == Compression::Auto,
            sample: Vec::with_capacity(SLICES * SLICE),
            scratch: vec![0; SLICES * SLICE],
        })
    }

    /// The compressed form of `data`, if it is worth sending: at least
    /// [`MIN_SAVING_PERCENT`] smaller. In auto mode a chunk whose sample does not shrink is
    /// not compressed at all.
    pub(crate) fn compress(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        if data.len() < MIN_LEN || (self.auto && looks_random(data)) {
            return None;
        }
        // A chunk no bigger than the sample is compressed once, for real, instead of being
        // tried as a sample first: a million small files must not each cost two attempts.
        if self.auto && data.len() > SLICES * SLICE && !self.sample_shrinks(data) {
            return None;
        }
        // The output buffer holds only what is worth sending: zstd stops with "destination
        // too small" as soon as the frame would be longer, which is our answer "not worth it".
        let limit = worth_len(data.len());
        let mut out = Vec::with_capacity(limit);
        let n = self.ctx.compress_to_buffer(data, &mut out).ok()?;
        // `with_capacity` may round up: hold the frame to the bound we meant.
        (n <= limit).then_some(out)
    }

    /// True if `SLICES` slices spread through `data` (longer than them all) compress by the
    /// worthwhile margin.
    fn sample_shrinks(&mut self, data: &[u8]) -> bool {
        self.sample.clear();
        let step = (data.len() - SLICE) / (SLICES - 1);
        for i in 0..SLICES {
            let at = i * step;
            self.sample.extend_from_slice(&data[at..at + SLICE]);
        }
        let sample = &self.sample;
        // A slice, not a `Vec`: zstd takes a slice's length as the hard bound on its output.
        let limit = worth_len(sample.len());
        self.ctx
            .compress_to_buffer(sample, &mut self.scratch[..limit])
            .is_ok()
    }
}

/// Bytes of a chunk the entropy probe looks at: this many slices of `PROBE_SLICE` bytes,
/// spread from its first byte to its last like the zstd sample.
const PROBE_SLICES: usize = 8;
const PROBE_SLICE: usize = 256;
/// Order-0 entropy (bits per byte) from which data is taken for random or already
/// compressed. Uniform random bytes measure ~8.0 on a 2 KiB probe (with the Miller-Madow
/// correction for a short sample); a chunk a few percent of which is zeros or text measures
/// below and goes on to the zstd sample.
const RANDOM_BITS_PER_BYTE: f64 = 7.8;

/// The cheap probe of [`Compression::Auto`]: a byte histogram of a few slices of `data`,
/// about a microsecond, against tens of microseconds for zstd to find out the same about
/// a small file (encrypted or compressed mail BLOBs, media, archives). Repetition at a
/// distance is invisible to it, so it only ever says "random"; zstd has the last word on
/// everything else.
pub(crate) fn looks_random(data: &[u8]) -> bool {
    let mut counts = [0u32; 256];
    let mut total = 0usize;
    if data.len() <= PROBE_SLICES * PROBE_SLICE {
        for &b in data {
            counts[b as usize] += 1;
        }
        total = data.len();
    } else {
        let step = (data.len() - PROBE_SLICE) / (PROBE_SLICES - 1);
        for i in 0..PROBE_SLICES {
            for &b in &data[i * step..i * step + PROBE_SLICE] {
                counts[b as usize] += 1;
            }
        }
        total += PROBE_SLICES * PROBE_SLICE;
    }
    // Too short to tell 8 bits per byte from what the histogram of a short sample shows.
    if total < 1024 {
        return false;
    }
    bits_per_byte(&counts, total) >= RANDOM_BITS_PER_BYTE
}

/// Order-0 entropy of a histogram of `total` (at most the probe's sample length) bytes, with
/// the Miller-Madow correction: a short sample shows fewer distinct bytes than its source has.
fn bits_per_byte(counts: &[u32; 256], total: usize) -> f64 {
    // -sum(p log2 p) with p = c/n is log2(n) - sum(c log2 c)/n: one table lookup per byte
    // value instead of a logarithm (a million small files took 256 logarithms each).
    let table = c_log2_c();
    let n = total as f64;
    let (mut sum, mut seen) = (0.0f64, 0u32);
    for &c in counts.iter().filter(|&&c| c > 0) {
        sum += table[c as usize];
        seen += 1;
    }
    n.log2() - sum / n + f64::from(seen.max(1) - 1) / (2.0 * n * std::f64::consts::LN_2)
}

/// `c * log2(c)` for every count the probe can see (at most its sample length).
fn c_log2_c() -> &'static [f64] {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=PROBE_SLICES * PROBE_SLICE)
            .map(|c| {
                if c == 0 {
                    0.0
                } else {
                    c as f64 * (c as f64).log2()
                }
            })
            .collect()
    })
}

thread_local! {
    /// One decompression context per blocking thread, reused for every chunk it decodes.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Why a compressed chunk was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecompressError {
    /// zstd could not decode it (damaged, truncated, or expanding past the chunk's length).
    #[error("it is not a valid zstd frame of at most {expected} bytes ({source})")]
    Invalid {
        expected: usize,
        #[source]
        source: io::Error,
    },
    /// It decoded to fewer bytes than the chunk holds.
    #[error("it decompressed to {got} bytes but the chunk holds {expected}")]
    Length { got: usize, expected: usize },
}

/// Decompresses one chunk that must hold exactly `expected` bytes. Output beyond `expected`
/// is an error, never an allocation: a hostile frame cannot expand past the chunk.
pub(crate) fn decompress(data: &[u8], expected: usize) -> Result<Vec<u8>, DecompressError> {
    let invalid = |source| DecompressError::Invalid { expected, source };
    let out = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = match slot.as_mut() {
            Some(dctx) => dctx,
            None => {
                let mut dctx = zstd::bulk::Decompressor::new()?;
                dctx.window_log_max(WINDOW_LOG_MAX)?;
                slot.insert(dctx)
            }
        };
        let mut out = Vec::with_capacity(expected);
        dctx.decompress_to_buffer(data, &mut out)?;
        Ok::<_, io::Error>(out)
    });
    let out = out.map_err(invalid)?;
    if out.len() != expected {
        return Err(DecompressError::Length {
            got: out.len(),
            expected,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng, rngs::StdRng};

    const MIB: usize = 1 << 20;

    fn random(len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        StdRng::seed_from_u64(len as u64).fill_bytes(&mut data);
        data
    }

    fn text(len: usize) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(9);
        let words = [
            "haul", "chunk", "verified", "BLAKE3", "quic", "sparse", "root", "\n",
        ];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            out.extend_from_slice(words[rng.next_u32() as usize % words.len()].as_bytes());
            out.push(b' ');
        }
        out.truncate(len);
        out
    }

    fn auto() -> ChunkCompressor {
        ChunkCompressor::new(Compression::Auto).unwrap()
    }

    #[test]
    fn off_has_no_compressor() {
        assert!(ChunkCompressor::new(Compression::Off).is_none());
        assert_eq!(Compression::default(), Compression::Auto);
    }

    #[test]
    fn text_round_trips_and_shrinks() {
        let data = text(4 * MIB + 7);
        let packed = auto().compress(&data).expect("text compresses");
        assert!(packed.len() * 3 < data.len(), "{} bytes", packed.len());
        assert_eq!(decompress(&packed, data.len()).unwrap(), data);
    }

    #[test]
    fn random_data_is_skipped_by_auto_and_by_on() {
        let data = random(4 * MIB);
        assert!(auto().compress(&data).is_none());
        // `on` skips the probe, but a frame that saves nothing is still not worth sending.
        let mut on = ChunkCompressor::new(Compression::On).unwrap();
        assert!(on.compress(&data).is_none());
        // Short chunks and tiny ones too.
        assert!(auto().compress(&random(40_000)).is_none());
        assert!(on.compress(&[0; 100]).is_none(), "below the minimum length");
    }

    #[test]
    fn auto_finds_zeros_past_the_first_slices() {
        // A sparse file's chunk whose data extent ends 1 MiB in: zeros follow.
        let mut data = random(MIB);
        data.resize(4 * MIB, 0);
        let mut c = auto();
        let packed = c.compress(&data).expect("the zeros are found");
        assert!(packed.len() < MIB + MIB / 10, "{} bytes", packed.len());
        assert_eq!(decompress(&packed, data.len()).unwrap(), data);
        // The same context serves the next chunk.
        let zeros = vec![0; 4 * MIB];
        let packed = c.compress(&zeros).unwrap();
        assert!(packed.len() < 4096);
        assert_eq!(decompress(&packed, zeros.len()).unwrap(), zeros);
    }

    #[test]
    fn the_entropy_table_gives_the_textbook_entropy() {
        for data in [random(2048), text(2048), vec![7; 1500], random(1024)] {
            let mut counts = [0u32; 256];
            for &b in &data {
                counts[b as usize] += 1;
            }
            let n = data.len() as f64;
            let seen = counts.iter().filter(|&&c| c > 0).count() as f64;
            let direct = counts
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| -(f64::from(c) / n) * (f64::from(c) / n).log2())
                .sum::<f64>()
                + (seen - 1.0) / (2.0 * n * std::f64::consts::LN_2);
            let fast = bits_per_byte(&counts, data.len());
            assert!((fast - direct).abs() < 1e-9, "{fast} vs {direct}");
        }
    }

    #[test]
    fn the_entropy_probe_calls_only_random_data_random() {
        assert!(looks_random(&random(4 * MIB)));
        assert!(looks_random(&random(8 << 10)));
        assert!(!looks_random(&text(8 << 10)));
        assert!(!looks_random(&vec![0; 8 << 10]));
        // Too short to judge: left to zstd.
        assert!(!looks_random(&random(600)));
        // Random with an eighth of zeros compresses by ~12%: the probe must let zstd see it,
        // wherever the zeros are.
        let mut mixed = random(4 * MIB);
        mixed[MIB..MIB + MIB / 2].fill(0);
        assert!(!looks_random(&mixed));
        let packed = auto()
            .compress(&mixed)
            .expect("the zeros are worth compressing");
        assert_eq!(decompress(&packed, mixed.len()).unwrap(), mixed);
        // A small compressible file is compressed by auto in one go.
        let small = text(6000);
        let packed = auto().compress(&small).expect("small text compresses");
        assert_eq!(decompress(&packed, small.len()).unwrap(), small);
    }

    #[test]
    fn a_frame_that_expands_past_the_chunk_is_refused() {
        // 64 MiB of zeros compress to a few KiB: a receiver expecting a 4 MiB chunk must stop
        // at 4 MiB, not allocate 64.
        let bomb = zstd::bulk::compress(&vec![0; 64 * MIB], 19).unwrap();
        assert!(bomb.len() < 64 << 10);
        let err = decompress(&bomb, 4 * MIB).unwrap_err();
        assert!(matches!(err, DecompressError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("at most 4194304 bytes"), "{err}");
    }

    #[test]
    fn a_short_truncated_or_garbage_frame_is_refused() {
        let data = text(MIB);
        let packed = auto().compress(&data).unwrap();
        let err = decompress(&packed, data.len() + 1).unwrap_err();
        assert!(
            matches!(err, DecompressError::Length { got, expected } if got == data.len() && expected == data.len() + 1),
            "{err}"
        );
        assert!(decompress(&packed[..packed.len() / 2], data.len()).is_err());
        assert!(decompress(&random(5000), data.len()).is_err());
        assert!(decompress(&[], data.len()).is_err());
        // A valid frame still decodes after the failures, on the same thread's context.
        assert_eq!(decompress(&packed, data.len()).unwrap(), data);
    }
}
