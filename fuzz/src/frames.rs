//! The `frame_decode` harness: arbitrary bytes through `FrameDecoder` and `Message::decode`.
//!
//! Input layout: the first byte `k` (taken mod 16) says how many piece-size bytes follow; each
//! of those gives a piece length of 1..=256 bytes, used in turn, to cut the rest of the input
//! (the stream) into the pushes a socket might deliver. `k == 0` pushes the stream whole.
//!
//! Properties checked:
//! - how the stream is split never changes which frames (or which error) come out;
//! - every byte pushed is either inside a returned frame or still buffered;
//! - when no frame is ready, `wanted()` asks for at least one more byte;
//! - every decoded message respects the bounds decoding promises: text fields at most
//!   `max_text` bytes (invalid UTF-8 is replaced, then cut back), at most `Have::MAX_HASHES`
//!   hashes, at most 256 rename-aside directories / renamed pairs;
//! - every frame that decodes re-encodes (`encode` equals `encode_parts` concatenated) to bytes
//!   that decode, with the same limits, to the same message.

use haul_proto::frame::{Frame, HEADER_LEN};
use haul_proto::{FrameDecoder, FrameError, Have, Limits, Message};

/// Most `rename_aside` directories in a `Hello` (and `renamed` pairs in a `Welcome`) that
/// decoding accepts; `haul-proto` keeps its constant private.
const MAX_ASIDE: usize = 256;

/// What a decoder produced from a whole stream: the frames, then an error if one stopped it.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<FrameError>,
}

/// Runs one input. Panics when a property fails.
pub fn run(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(k);
    let limits = Limits::default();

    let whole = decode_stream(stream, &[], &limits);
    if !sizes.is_empty() {
        let split = decode_stream(stream, sizes, &limits);
        assert_eq!(whole, split, "splitting the stream changed the frames");
    }
    for frame in whole.frames {
        check_message(frame, &limits);
    }
}

/// Pushes `stream` in pieces cut by `sizes` (whole if empty), draining frames after each push.
fn decode_stream(stream: &[u8], sizes: &[u8], limits: &Limits) -> Outcome {
    let mut decoder = FrameDecoder::new(limits.clone());
    let mut frames = Vec::new();
    let mut consumed = 0usize;
    let mut pushed = 0usize;
    let mut piece_sizes = sizes.iter().map(|&b| usize::from(b) + 1).cycle();
    while pushed < stream.len() {
        let len = piece_sizes
            .next()
            .unwrap_or(stream.len())
            .min(stream.len() - pushed);
        decoder.push(&stream[pushed..pushed + len]);
        pushed += len;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    consumed += HEADER_LEN + frame.body.len();
                    frames.push(frame);
                }
                Ok(None) => {
                    assert!(decoder.wanted() >= 1, "no frame ready yet wanted() is 0");
                    break;
                }
                Err(error) => {
                    return Outcome {
                        frames,
                        error: Some(error),
                    };
                }
            }
            assert_eq!(
                consumed + decoder.buffered(),
                pushed,
                "bytes lost or invented"
            );
        }
    }
    assert_eq!(
        consumed + decoder.buffered(),
        pushed,
        "bytes lost or invented"
    );
    assert_eq!(
        decoder.finish().is_ok(),
        decoder.buffered() == 0,
        "finish() disagrees with buffered()"
    );
    Outcome {
        frames,
        error: None,
    }
}

/// Decodes one frame; if it is a valid message, checks its encodings round-trip.
fn check_message(frame: Frame, limits: &Limits) {
    let kind = frame.kind;
    let Ok(msg) = Message::decode(frame, limits) else {
        return;
    };
    check_bounds(&msg, limits);
    let wire = msg.encode();
    let (head, payload) = msg.encode_parts();
    assert_eq!(
        [&head[..], &payload[..]].concat(),
        &wire[..],
        "encode() differs from encode_parts() for {}",
        msg.name()
    );
    let mut decoder = FrameDecoder::new(limits.clone());
    decoder.push(&wire);
    let again = match decoder.next_frame() {
        Ok(Some(frame)) => frame,
        other => panic!(
            "re-encoded {} is not one whole frame: {other:?}",
            msg.name()
        ),
    };
    assert_eq!(
        decoder.buffered(),
        0,
        "re-encoded {} has bytes after its frame",
        msg.name()
    );
    assert_eq!(again.kind, kind, "re-encoding changed the message type");
    match Message::decode(again, limits) {
        Ok(decoded) => assert_eq!(decoded, msg, "re-encoding changed the message"),
        Err(err) => panic!("re-encoded {} does not decode: {err}", msg.name()),
    }
}

/// Checks the bounds a decoded message must respect whatever the peer declared.
fn check_bounds(msg: &Message, limits: &Limits) {
    let text = match msg {
        Message::Refused(m) => Some(&m.message),
        Message::SourceFailed(m) => Some(&m.message),
        Message::Failed(m) => Some(&m.message),
        Message::Abort(m) => Some(&m.message),
        _ => None,
    };
    if let Some(text) = text {
        assert!(
            text.len() <= limits.max_text as usize,
            "{} text of {} bytes exceeds max_text {}",
            msg.name(),
            text.len(),
            limits.max_text
        );
    }
    let count = match msg {
        Message::Have(m) => Some((m.hashes.len(), Have::MAX_HASHES)),
        Message::Hello(m) => Some((m.rename_aside.len(), MAX_ASIDE)),
        Message::Welcome(m) => Some((m.renamed.len(), MAX_ASIDE)),
        _ => None,
    };
    if let Some((n, max)) = count {
        assert!(n <= max, "{} holds {n} items, over {max}", msg.name());
    }
}
