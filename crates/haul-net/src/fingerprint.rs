//! Certificate fingerprints: how a client names the one server certificate it trusts.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::NetError;

const PREFIX: &str = "sha256:";

/// SHA-256 of a certificate's DER encoding.
///
/// Displays as `sha256:` followed by 64 lowercase hex digits. Parses from that form or from bare
/// hex, case-insensitively, with optional colons between bytes (`AB:CD:...`), because that is
/// how other tools (openssl, browsers) print fingerprints and users paste them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Fingerprint, NetError> {
        parse(s).map_err(|why| {
            NetError::BadFingerprint(format!(
                "`{s}` is not a certificate fingerprint ({why}); expected `sha256:` followed by \
                 64 hex digits, as printed by `haul serve`"
            ))
        })
    }
}

fn parse(s: &str) -> Result<Fingerprint, String> {
    let s = s.trim();
    let hex = match s.get(..PREFIX.len()) {
        Some(head) if head.eq_ignore_ascii_case(PREFIX) => &s[PREFIX.len()..],
        _ => s,
    };
    let mut out = [0u8; 32];
    if hex.contains(':') {
        // Colons, if used, must separate every byte; a stray colon usually means a paste went wrong.
        let parts: Vec<&str> = hex.split(':').collect();
        if parts.len() != 32 || parts.iter().any(|p| p.len() != 2) {
            return Err("colons must separate 32 two-digit bytes".to_owned());
        }
        for (slot, part) in out.iter_mut().zip(parts) {
            *slot = byte(part.as_bytes())?;
        }
    } else {
        if hex.len() != 64 {
            return Err(format!(
                "found {} characters instead of 64 hex digits",
                hex.len()
            ));
        }
        for (slot, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *slot = byte(pair)?;
        }
    }
    Ok(Fingerprint(out))
}

fn byte(pair: &[u8]) -> Result<u8, String> {
    let digit = |c: u8| {
        (c as char)
            .to_digit(16)
            .ok_or_else(|| format!("`{}` is not a hex digit", c.escape_ascii()))
    };
    match pair {
        [hi, lo] => Ok((digit(*hi)? * 16 + digit(*lo)?) as u8),
        _ => Err("odd number of hex digits".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let fp = Fingerprint::of_der(b"some certificate");
        let text = fp.to_string();
        assert!(text.starts_with("sha256:"));
        assert_eq!(text.len(), 7 + 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        // bare hex, upper case, and colon-separated all parse to the same value
        let bare = &text[7..];
        assert_eq!(bare.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(bare.to_uppercase().parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            format!("SHA256:{}", bare.to_uppercase())
                .parse::<Fingerprint>()
                .unwrap(),
            fp
        );
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(colons.join(":").parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(format!("  {text}\n").parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn of_der_is_sha256() {
        // SHA-256("abc"), a published test vector.
        let fp = Fingerprint::of_der(b"abc");
        assert_eq!(
            fp.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bad_input_is_rejected_with_a_clear_message() {
        let good = Fingerprint::of_der(b"x").to_string();
        let bad = [
            "",
            "sha256:",
            "sha1:abcd",
            &good[..good.len() - 1],
            &format!("{good}00"),
            &format!("sha256:{}", "g".repeat(64)),
            &format!("{}:", &good[7..]),
            "ab:cd",
        ];
        for input in bad {
            let err = input.parse::<Fingerprint>().unwrap_err();
            assert!(
                matches!(err, NetError::BadFingerprint(_)),
                "{input}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains("64 hex digits"), "{msg}");
        }
    }
}
