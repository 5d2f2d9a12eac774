//! What a transfer is asked to do: its options and request, and the hello that carries the
//! options to the receiver ([`hello_for`]) or, in a pull, from the client to the serving host
//! ([`options_from_hello`]).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use haul_proto::{Hello, PROTOCOL_VERSION};

use crate::compress::Compression;

/// How a transfer is shaped. Defaults win without tuning.
#[derive(Clone, Debug)]
pub struct TransferOptions {
    /// Chunk size in bytes, a power of two (default 4 MiB).
    pub chunk_size: u32,
    /// Parallel data streams (default 4).
    pub streams: usize,
    /// Read/hash threads (default: the number of cores, at least 2).
    pub readers: usize,
    /// Entries announced and not yet resolved, at most.
    pub window: usize,
    /// Emit an [`Event::FileInstalled`](crate::progress::Event::FileInstalled) for every
    /// file, with its verified hash.
    pub list_files: bool,
    /// Compare files by hash even when size and mtime match (adopts a copy made by another
    /// tool without sending what it already holds).
    pub checksum: bool,
    /// Plan only: report what would be sent, change nothing.
    pub dry_run: bool,
    /// Directories under the destination to rename aside and copy anew.
    pub rename_aside: Vec<Vec<u8>>,
    /// `copy` only: run the embedded receiver over loopback QUIC (with TLS) instead of in
    /// this process, to measure or test the network path without a server.
    pub via_quic: bool,
    /// zstd-compress chunk data on the wire (default [`Compression::Auto`]). Chunk hashes
    /// always cover the uncompressed data.
    pub compress: Compression,
    /// Most bytes per second of chunk data put on the wire, over all streams (`None`: as fast
    /// as the link allows).
    pub bwlimit: Option<u64>,
    /// Send owners and groups and ask the receiver to keep them (default on; applied where
    /// the receiver's grant allows it).
    pub owners: bool,
    /// Owners as numbers only, not mapped through user and group names.
    pub numeric_ids: bool,
    /// Send extended attributes and POSIX ACLs (default on).
    pub xattrs: bool,
    /// Copy hard links as links (default on): each multiply-linked file is sent once.
    pub hard_links: bool,
    /// Mirror: remove what the destination holds beyond the source, after the copy.
    pub delete: bool,
    /// With `delete`, also remove what the filter excludes.
    pub delete_excluded: bool,
    /// With `delete`, refuse to remove more than this many entries (nothing is removed then).
    pub max_delete: Option<u64>,
    /// Which entries of the source to copy.
    pub filter: Option<Arc<haul_manifest::Filter>>,
    /// Do not cross into other file systems below the source.
    pub one_file_system: bool,
    /// The job this transfer works for, as named when it took a lease on the destination: a
    /// receiver refuses writes into a leased subtree from anyone but its holder.
    pub holder: Option<String>,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            chunk_size: haul_proto::DEFAULT_CHUNK_SIZE,
            streams: 4,
            readers: crate::cores().max(2),
            window: 8192,
            list_files: false,
            checksum: false,
            dry_run: false,
            rename_aside: Vec::new(),
            via_quic: false,
            compress: Compression::Auto,
            bwlimit: None,
            owners: true,
            numeric_ids: false,
            xattrs: true,
            hard_links: true,
            delete: false,
            delete_excluded: false,
            max_delete: None,
            filter: None,
            one_file_system: false,
            holder: None,
        }
    }
}

/// What to send and where.
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// The file or tree to send.
    pub source: PathBuf,
    /// The destination path under the receiver's root (`/`-separated bytes).
    pub dest: Vec<u8>,
    /// The token proving we may write there.
    pub token: Vec<u8>,
    /// Shape of the transfer.
    pub options: TransferOptions,
}

/// The hello that asks a receiver for a session shaped by `opts`. A pulling client sends the
/// same hello with [`Hello::PULL`] and the serving host turns it back into options
/// ([`options_from_hello`]), so both directions agree on every option. The token goes out
/// as the proof bound to `link`'s TLS session ([`haul_net::present`]), never bare over QUIC.
pub(crate) fn hello_for(
    opts: &TransferOptions,
    token: &[u8],
    link: &dyn crate::Link,
    dest: &[u8],
) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        token: haul_net::present(token, link.channel_binding().as_ref()).into(),
        dest: Bytes::copy_from_slice(dest),
        chunk_size: opts.chunk_size,
        flags: flag(opts.checksum, Hello::CHECKSUM)
            | flag(opts.dry_run, Hello::DRY_RUN)
            | flag(opts.compress != Compression::Off, Hello::COMPRESS)
            | flag(opts.owners, Hello::OWNERS)
            | flag(opts.numeric_ids, Hello::NUMERIC_IDS)
            | flag(opts.xattrs, Hello::XATTRS)
            | flag(opts.delete, Hello::DELETE)
            | flag(opts.delete && opts.delete_excluded, Hello::DELETE_EXCLUDED)
            | flag(!opts.hard_links, Hello::NO_HARD_LINKS)
            | flag(opts.one_file_system, Hello::ONE_FILE_SYSTEM),
        rename_aside: opts
            .rename_aside
            .iter()
            .map(|d| Bytes::from(d.clone()))
            .collect(),
        filters: opts
            .filter
            .as_ref()
            .map(|f| f.to_rules().into_iter().map(Bytes::from).collect())
            .unwrap_or_default(),
        max_delete: opts.max_delete.unwrap_or(u64::MAX),
        holder: Bytes::copy_from_slice(opts.holder.as_deref().unwrap_or_default().as_bytes()),
        snapshot: Bytes::new(),
    }
}

/// The options a pulling client asked for in its hello, for the serving host's sender. What
/// only the sending host can choose (streams, readers, window) keeps its default.
pub(crate) fn options_from_hello(hello: &Hello) -> Result<TransferOptions, String> {
    let filter = if hello.filters.is_empty() {
        None
    } else {
        let rules = hello.filters.iter().map(|r| r.to_vec()).collect::<Vec<_>>();
        Some(Arc::new(
            haul_manifest::Filter::from_rules(&rules)
                .map_err(|e| format!("filter rules refused: {e}"))?,
        ))
    };
    Ok(TransferOptions {
        chunk_size: hello.chunk_size,
        checksum: hello.has(Hello::CHECKSUM),
        dry_run: hello.has(Hello::DRY_RUN),
        compress: if hello.has(Hello::COMPRESS) {
            Compression::Auto
        } else {
            Compression::Off
        },
        owners: hello.has(Hello::OWNERS),
        numeric_ids: hello.has(Hello::NUMERIC_IDS),
        xattrs: hello.has(Hello::XATTRS),
        delete: hello.has(Hello::DELETE),
        delete_excluded: hello.has(Hello::DELETE_EXCLUDED),
        hard_links: !hello.has(Hello::NO_HARD_LINKS),
        one_file_system: hello.has(Hello::ONE_FILE_SYSTEM),
        rename_aside: hello.rename_aside.iter().map(|d| d.to_vec()).collect(),
        max_delete: (hello.max_delete != u64::MAX).then_some(hello.max_delete),
        filter,
        ..TransferOptions::default()
    })
}

fn flag(on: bool, bit: u32) -> u32 {
    if on { bit } else { 0 }
}
