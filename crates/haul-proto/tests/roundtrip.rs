//! Property tests: every message survives encode/decode, in any split of the byte stream, and
//! decoding arbitrary bytes never panics.

use bytes::Bytes;
use haul_proto::{
    Chunk, Entry, EntryKind, FrameDecoder, Hello, Limits, Message, Meta, Need, RefuseReason,
    Refused, Request, Response,
};
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (bytes(64), bytes(256), any::<u32>(), bytes(64)).prop_map(|(token, dest, cs, holder)| {
            Message::Hello(Hello {
                version: haul_proto::PROTOCOL_VERSION,
                token,
                dest,
                chunk_size: cs,
                flags: Hello::CHECKSUM | Hello::DRY_RUN | Hello::COMPRESS,
                rename_aside: vec![Bytes::from_static(b"ofuser")],
                filters: Vec::new(),
                max_delete: u64::MAX,
                holder,
                snapshot: Bytes::from_static(b"20261204T181500Z-a1b2c3"),
            })
        }),
        (any::<u64>(), bytes(512)).prop_map(|(id, body)| Message::Request(Request { id, body })),
        (any::<u64>(), any::<bool>(), any::<bool>(), bytes(512))
            .prop_map(|(id, ok, more, body)| Message::Response(Response { id, ok, more, body })),
        (
            any::<u64>(),
            0u8..3,
            bytes(300),
            any::<u64>(),
            any::<u32>(),
            any::<i64>(),
            0u32..1_000_000_000,
            bytes(100)
        )
            .prop_map(
                |(id, k, path, size, mode, mtime_sec, mtime_nsec, link_target)| {
                    let kind = [EntryKind::File, EntryKind::Dir, EntryKind::Symlink][k as usize];
                    Message::Entry(Entry {
                        id,
                        kind,
                        path,
                        size,
                        meta: Meta {
                            mode,
                            mtime_sec,
                            mtime_nsec,
                        },
                        link_target,
                        uid: 0,
                        gid: 0,
                        rdev: 0,
                        source_stamp: 0,
                        xattrs: Vec::new(),
                    })
                }
            ),
        (
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..20)
        )
            .prop_map(|(id, ranges)| Message::Need(Need { id, ranges })),
        (
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            0u8..3,
            bytes(5000)
        )
            .prop_map(|(id, index, hash, encoding, data)| {
                // 0 raw, 1 a hole (no data), 2 zstd (never empty).
                let data = match encoding {
                    1 => Bytes::new(),
                    2 if data.is_empty() => Bytes::from_static(b"\x28\xb5\x2f\xfd"),
                    _ => data,
                };
                Message::Chunk(Chunk {
                    id,
                    index,
                    hash,
                    zero: encoding == 1,
                    compressed: encoding == 2,
                    data,
                })
            }),
        ".{0,80}".prop_map(|message| Message::Refused(Refused {
            reason: RefuseReason::BadToken,
            message
        })),
        Just(Message::EndOfEntries),
        (
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..50)
        )
            .prop_map(
                |(id, start, journaled, hashes)| Message::Have(haul_proto::Have {
                    id,
                    start,
                    journaled,
                    hashes
                })
            ),
        (
            any::<u64>(),
            bytes(300),
            bytes(255),
            bytes(255),
            any::<u64>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(id, dir, first, last, files, digest)| Message::QuickCheck(
                haul_proto::QuickCheck {
                    id,
                    dir,
                    first,
                    last,
                    files,
                    digest
                }
            )),
        (any::<u64>(), any::<bool>()).prop_map(|(id, unchanged)| Message::QuickChecked(
            haul_proto::QuickChecked { id, unchanged }
        )),
    ]
}

proptest! {
    /// Buffers handed over whole (`push_bytes`, as the in-process link does) decode the same as
    /// copied bytes, wherever they are cut, including chunk data large enough to be kept by
    /// reference and cuts inside a chunk's fields.
    #[test]
    fn round_trip_of_owned_buffers_in_any_split(
        msgs in proptest::collection::vec(message(), 0..4),
        big in 16usize << 10..80 << 10,
        cuts in proptest::collection::vec(1usize..100_000, 1..6),
    ) {
        let mut msgs = msgs;
        msgs.push(Message::Chunk(Chunk {
            id: 1,
            index: 0,
            hash: [3; 32],
            zero: false,
            compressed: big % 2 == 0,
            data: Bytes::from(vec![9u8; big]),
        }));
        let mut wire = Vec::new();
        for m in &msgs {
            let (head, payload) = m.encode_parts();
            wire.extend_from_slice(&head);
            wire.extend_from_slice(&payload);
        }
        let wire = Bytes::from(wire);
        let limits = Limits::default();
        let mut dec = FrameDecoder::new(limits.clone());
        let mut got = Vec::new();
        let mut at = 0;
        let mut cuts = cuts.into_iter().cycle();
        while at < wire.len() {
            let end = (at + cuts.next().unwrap_or(1)).min(wire.len());
            dec.push_bytes(wire.slice(at..end));
            at = end;
            while let Some(frame) = dec.next_frame().unwrap() {
                got.push(Message::decode(frame, &limits).unwrap());
            }
        }
        dec.finish().unwrap();
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn round_trip_in_any_split(msgs in proptest::collection::vec(message(), 1..8), split in 1usize..97) {
        let mut wire = Vec::new();
        for m in &msgs {
            let (head, payload) = m.encode_parts();
            wire.extend_from_slice(&head);
            wire.extend_from_slice(&payload);
        }
        let limits = Limits::default();
        let mut dec = FrameDecoder::new(limits.clone());
        let mut got = Vec::new();
        for piece in wire.chunks(split) {
            dec.push(piece);
            while let Some(frame) = dec.next_frame().unwrap() {
                got.push(Message::decode(frame, &limits).unwrap());
            }
        }
        dec.finish().unwrap();
        prop_assert_eq!(got, msgs);
    }

    /// A sender that reads a chunk straight into its outgoing buffer writes the head with
    /// `Chunk::write_head`: what it sends must be the frame `encode` makes, and decode back.
    #[test]
    fn chunk_head_written_in_place_is_the_encoded_frame(
        id in any::<u64>(), index in any::<u64>(), hash in any::<[u8; 32]>(),
        encoding in 0u8..3, data in bytes(3000),
    ) {
        let (zero, compressed) = (encoding == 1, encoding == 2);
        let data = if zero { Bytes::new() } else { data };
        let chunk = Chunk { id, index, hash, zero, compressed, data: data.clone() };
        let mut wire = vec![0xAA; Chunk::HEAD_LEN];
        chunk.write_head(&mut wire, data.len());
        wire.extend_from_slice(&data);
        let msg = Message::Chunk(chunk);
        prop_assert_eq!(&wire[..], &msg.encode()[..]);
        let limits = Limits::default();
        let mut dec = FrameDecoder::new(limits.clone());
        dec.push(&wire);
        let frame = dec.next_frame().unwrap().unwrap();
        prop_assert_eq!(Message::decode(frame, &limits).unwrap(), msg);
    }

    /// Control writers append message after message with `encode_into`: every frame must be
    /// byte for byte the one `encode_parts` makes, whatever the buffer already held.
    #[test]
    fn frames_encoded_into_a_shared_buffer_are_the_encoded_frames(
        msgs in proptest::collection::vec(message(), 1..8),
        lead in bytes(100),
    ) {
        let mut out = bytes::BytesMut::from(&lead[..]);
        let mut want = lead.to_vec();
        for m in &msgs {
            m.encode_into(&mut out);
            let (head, payload) = m.encode_parts();
            want.extend_from_slice(&head);
            want.extend_from_slice(&payload);
        }
        prop_assert_eq!(&out[..], &want[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(wire in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let limits = Limits::default();
        let mut dec = FrameDecoder::new(limits.clone());
        dec.push(&wire);
        while let Ok(Some(frame)) = dec.next_frame() {
            let _ = Message::decode(frame, &limits);
        }
    }
}

/// Found by the `frame_decode` fuzzer's harness review: invalid UTF-8 in a text field expands
/// (each bad byte becomes a 3-byte U+FFFD), so an accepted message re-encoded past the limit
/// and its own decoder refused it. Text is now cut back to the limit when decoded.
#[test]
fn lossy_text_stays_within_its_limit() {
    let limits = Limits::default();
    let mut body = Vec::new();
    body.extend_from_slice(&1u64.to_be_bytes());
    body.extend_from_slice(&2000u32.to_be_bytes());
    body.extend_from_slice(&[0xff; 2000]);
    body.push(0);
    let mut wire = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    wire.push(10); // Failed
    wire.extend_from_slice(&body);
    let mut dec = FrameDecoder::new(limits.clone());
    dec.push(&wire);
    let msg = Message::decode(dec.next_frame().unwrap().unwrap(), &limits).unwrap();
    let mut again = FrameDecoder::new(limits.clone());
    again.push(&msg.encode());
    let round = Message::decode(again.next_frame().unwrap().unwrap(), &limits).unwrap();
    assert_eq!(round, msg);
}

/// The chunk encoding byte: 0 raw, 1 zero, 2 zstd. Anything else, a compressed chunk with no
/// data, or a hole with data is refused.
#[test]
fn chunk_encodings_are_checked() {
    let limits = Limits::default();
    let decode = |wire: &[u8]| {
        let mut dec = FrameDecoder::new(limits.clone());
        dec.push(wire);
        Message::decode(dec.next_frame().unwrap().unwrap(), &limits)
    };
    let chunk = |zero, compressed, data: &'static [u8]| {
        Message::Chunk(Chunk {
            id: 1,
            index: 2,
            hash: [5; 32],
            zero,
            compressed,
            data: Bytes::from_static(data),
        })
    };
    // Frame header (length, type), then id, index and hash: the encoding byte follows.
    let at = 5 + 8 + 8 + 32;
    let zstd = chunk(false, true, b"frame");
    let wire = zstd.encode().to_vec();
    assert_eq!(wire[at], 2);
    assert_eq!(decode(&wire).unwrap(), zstd);
    let mut bad = wire.clone();
    bad[at] = 3;
    assert!(matches!(
        decode(&bad),
        Err(haul_proto::DecodeError::Invalid {
            field: "chunk encoding",
            value: 3
        })
    ));
    bad[at] = 1;
    assert!(decode(&bad).is_err(), "a hole carries no data");
    let empty = chunk(false, true, b"").encode();
    assert_eq!(empty[at], 2);
    assert!(decode(&empty).is_err(), "a zstd frame is never empty");
    assert_eq!(chunk(true, false, b"").encode()[at], 1);
    assert_eq!(chunk(false, false, b"raw").encode()[at], 0);
}

/// A hello of another protocol version may carry other fields: it decodes to its version
/// alone, so the receiver can refuse it naming both versions instead of failing to parse it.
#[test]
fn hello_of_another_version_decodes_to_its_version() {
    use bytes::BufMut;
    let mut body = bytes::BytesMut::new();
    body.put_u16(haul_proto::PROTOCOL_VERSION - 1);
    body.put_slice(b"fields this version does not know");
    let mut frame = bytes::BytesMut::new();
    frame.put_u32(body.len() as u32 + 1);
    frame.put_u8(1);
    frame.put_slice(&body);
    let mut decoder = FrameDecoder::new(Limits::default());
    decoder.push(&frame);
    let frame = decoder.next_frame().unwrap().unwrap();
    match Message::decode(frame, &Limits::default()).unwrap() {
        Message::Hello(h) => {
            assert_eq!(h.version, haul_proto::PROTOCOL_VERSION - 1);
            assert!(h.token.is_empty());
        }
        other => panic!("decoded {other:?}"),
    }
}
