//! `--delete` on the sending side: once every entry is resolved, a walk of the source lists
//! each directory's names to the receiver (`Prune`), which removes what its copy holds beyond
//! them once the listing is complete (`PruneEnd`). The walk runs on its own thread; the control
//! loop decides when it starts and reads its result.

use std::path::PathBuf;

use bytes::Bytes;
use haul_proto::Message;
use tokio::sync::{mpsc, oneshot};

use crate::error::EngineError;

/// Starts the `--delete` listing on its own thread; the receiver yields its result (see
/// [`walk_for_delete`]) once the walk is over.
pub(super) fn start(
    source: PathBuf,
    walk_options: haul_manifest::ScanOptions,
    out: mpsc::UnboundedSender<Vec<Message>>,
) -> Result<oneshot::Receiver<Option<String>>, EngineError> {
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("haul-delete-walk".into())
        .spawn(move || {
            let _ = done_tx.send(walk_for_delete(&source, &walk_options, &out));
        })
        .map_err(|e| EngineError::connection("cannot start the --delete listing", e))?;
    Ok(done_rx)
}

/// The `--delete` listing: every source directory's names, sent as `Prune` lists, then
/// `PruneEnd`. Returns the first problem instead, having sent no `PruneEnd` (the receiver then
/// deletes nothing).
fn walk_for_delete(
    source: &std::path::Path,
    options: &haul_manifest::ScanOptions,
    out: &mpsc::UnboundedSender<Vec<Message>>,
) -> Option<String> {
    for dir in haul_manifest::walk_names(source, options) {
        let dir = match dir {
            Ok(dir) => dir,
            Err(e) => return Some(e.to_string()),
        };
        let mut msgs = Vec::new();
        let mut names = dir.names.into_iter().map(Bytes::from).peekable();
        loop {
            let part: Vec<Bytes> = names
                .by_ref()
                .take(haul_proto::Prune::MAX_NAMES as usize)
                .collect();
            let last = names.peek().is_none();
            msgs.push(Message::Prune(haul_proto::Prune {
                dir: Bytes::copy_from_slice(&dir.rel),
                names: part,
                last,
            }));
            if last {
                break;
            }
        }
        if out.send(msgs).is_err() {
            return Some("the session ended during the --delete listing".into());
        }
    }
    let _ = out.send(vec![Message::PruneEnd]);
    None
}
