//! The relationship registry on the destination hosts: one [`VolumeRecord`] per destination
//! volume, kept by the host (the engine's `registry_get` / `registry_put` / `registry_list`
//! remote operations, in the host's `.haul/registry/`), so any server that reaches the host
//! discovers the relationships into it and who owns them.

use haul_engine::remote::Remote;

use crate::error::ProtectError;
use crate::model::VolumeRecord;

/// The record of `volume` (empty when none was written).
pub(crate) async fn read(remote: &mut Remote, volume: &str) -> Result<VolumeRecord, ProtectError> {
    let text = remote
        .registry_get(volume)
        .await
        .map_err(ProtectError::engine(format!(
            "cannot read the registry record of {volume}"
        )))?;
    match text {
        None => Ok(VolumeRecord::default()),
        Some(text) => parse(volume, &text),
    }
}

/// Replaces the record of `volume`.
pub(crate) async fn write(
    remote: &mut Remote,
    volume: &str,
    record: &VolumeRecord,
) -> Result<(), ProtectError> {
    let text = if record.relationships.is_empty() {
        String::new()
    } else {
        serde_json::to_string(record).expect("records serialize")
    };
    remote
        .registry_put(volume, &text)
        .await
        .map_err(ProtectError::engine(format!(
            "cannot write the registry record of {volume}"
        )))
}

/// Every volume's record on the host, by volume.
pub(crate) async fn list(remote: &mut Remote) -> Result<Vec<(String, VolumeRecord)>, ProtectError> {
    let records = remote
        .registry_list()
        .await
        .map_err(ProtectError::engine("cannot list the registry"))?;
    let mut out = Vec::new();
    for r in records {
        // Records written by something other than this workflow are not ours to read.
        if let Ok(record) = parse(&r.path, &r.record) {
            out.push((r.path, record));
        }
    }
    Ok(out)
}

fn parse(volume: &str, text: &str) -> Result<VolumeRecord, ProtectError> {
    serde_json::from_str(text).map_err(|e| {
        ProtectError::Invalid(format!(
            "the host's registry record of {volume} is not a protection record ({e})"
        ))
    })
}
