//! `haul elm sample`: a synthetic appliance, deterministic from a seed.
//!
//! The layout is what the workflow reads (see [`crate::layout`]): `layers/` with layer disk
//! files that are large and partly sparse (like VHDs: data at the start, holes, data again),
//! `templates/`, `connectors/<name>/` each with a `cache/` directory, `agents/`
//! (registrations), `database/` (small files), `config/share` (the appliance's network file
//! share) and, optionally, `config/certs/` (a custom certificate).

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::error::ElmError;
use crate::layout;

/// What to generate.
#[derive(Clone, Debug)]
pub struct SampleSpec {
    /// Layer disk files.
    pub layers: u32,
    /// Apparent size of each layer file, in bytes.
    pub layer_size: u64,
    /// Seed: the same seed gives the same bytes.
    pub seed: u64,
    /// Also write a custom certificate under `config/certs/`.
    pub certificate: bool,
    /// The network file share written to `config/share`.
    pub share: String,
}

/// What was generated.
#[derive(Clone, Debug, Serialize)]
pub struct SampleReport {
    /// The appliance directory.
    pub dir: PathBuf,
    /// Layer files written.
    pub layers: u32,
    /// Apparent bytes in all files.
    pub bytes: u64,
    /// Bytes of data actually written (layers are partly sparse).
    pub data_bytes: u64,
    /// The share written to `config/share`.
    pub share: String,
}

/// Writes a sample appliance into `dir` (created; must be empty or missing).
pub fn generate(dir: &Path, spec: &SampleSpec) -> Result<SampleReport, ElmError> {
    let io = |path: &Path, e: std::io::Error| ElmError::Local {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if dir.exists() && fs::read_dir(dir).map_err(|e| io(dir, e))?.next().is_some() {
        return Err(ElmError::Invalid(format!(
            "{} is not empty: give a new directory for the sample appliance",
            dir.display()
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let mut report = SampleReport {
        dir: dir.to_path_buf(),
        layers: spec.layers,
        bytes: 0,
        data_bytes: 0,
        share: spec.share.clone(),
    };
    let write = |rel: &str, data: &[u8], report: &mut SampleReport| -> Result<(), ElmError> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let mut f = fs::File::create(&path).map_err(|e| io(&path, e))?;
        f.write_all(data).map_err(|e| io(&path, e))?;
        report.bytes += data.len() as u64;
        report.data_bytes += data.len() as u64;
        Ok(())
    };
    for i in 1..=spec.layers {
        let path = dir.join(layout::LAYERS).join(format!("layer-{i:03}.vhdx"));
        write_layer(&path, spec.layer_size, &mut rng).map_err(|e| io(&path, e))?;
        report.bytes += spec.layer_size;
        report.data_bytes += layer_data_bytes(spec.layer_size);
    }
    let small = |rng: &mut rand::rngs::StdRng, n: usize| {
        let mut buf = vec![0u8; n];
        rng.fill_bytes(&mut buf);
        buf
    };
    for name in ["win10-base", "win11-vda"] {
        let len = 4096 + rng.random_range(0..4096);
        let data = small(&mut rng, len);
        write(&format!("templates/{name}.json"), &data, &mut report)?;
    }
    for name in ["vsphere-1", "nutanix-1"] {
        let config = format!("{{\"connector\":\"{name}\"}}\n");
        write(
            &format!("connectors/{name}/connector.json"),
            config.as_bytes(),
            &mut report,
        )?;
        let data = small(&mut rng, 64 << 10);
        write(
            &format!("connectors/{name}/cache/boot-disk.cache"),
            &data,
            &mut report,
        )?;
    }
    for i in 1..=3 {
        let reg = format!("agent=agent-{i}\nhost=pvs-{i}.example.invalid\n");
        write(
            &format!("agents/agent-{i}.reg"),
            reg.as_bytes(),
            &mut report,
        )?;
    }
    for name in ["elm.db", "elm.db-wal", "audit.db"] {
        let data = small(&mut rng, 16 << 10);
        write(&format!("database/{name}"), &data, &mut report)?;
    }
    write(
        layout::SHARE,
        format!("{}\n", spec.share).as_bytes(),
        &mut report,
    )?;
    if spec.certificate {
        write(
            "config/certs/custom.pem",
            b"-----BEGIN CERTIFICATE-----\nc2FtcGxlIGNlcnRpZmljYXRl\n-----END CERTIFICATE-----\n",
            &mut report,
        )?;
    }
    Ok(report)
}

/// A layer disk: data in its first and last eighth, a hole between (like a VHD that was
/// allocated but never filled).
fn write_layer(path: &Path, size: u64, rng: &mut impl RngCore) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let file = fs::File::create(path)?;
    file.set_len(size)?;
    let part = size / 8;
    let mut buf = vec![0u8; 1 << 20];
    for start in [0, size - part] {
        let mut at = start;
        while at < start + part {
            let n = (start + part - at).min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            file.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
    }
    file.sync_all()
}

fn layer_data_bytes(size: u64) -> u64 {
    2 * (size / 8)
}
