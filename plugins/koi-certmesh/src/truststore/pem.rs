//! Certificate text handling for the trust stores: PEM blocks in and out (a small base64 codec,
//! so no extra dependency), just enough DER to find where a certificate ends and what its serial
//! number is, and SHA-256 fingerprints. Stores are verified by fingerprint, never by name, so
//! "installed" always means "this exact certificate is there".

use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as PEM uses it.
pub(crate) fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[*s as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64, ignoring whitespace; `None` on any other invalid input.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = 0usize;
    for c in text.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return None; // data after padding
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    if padding > 2 {
        return None;
    }
    Some(out)
}

/// One `-----BEGIN <label>-----` … `-----END <label>-----` block, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

/// Every well-formed PEM block in `text`, in order; malformed blocks are skipped. Lines outside
/// blocks (comments such as p11-kit's `# Koi ...` headers) are ignored.
pub(crate) fn pem_blocks(text: &str) -> Vec<PemBlock> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_string(), String::new()));
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if let Some((open, body)) = current.take() {
                if open == label {
                    if let Some(der) = base64_decode(&body) {
                        blocks.push(PemBlock { label: open, der });
                    }
                }
            }
        } else if let Some((_, body)) = current.as_mut() {
            // RFC 1421 headers ("Proc-Type: ...") never appear in certificates; skip them anyway.
            if !line.contains(':') {
                body.push_str(line);
            }
        }
    }
    blocks
}

/// The DER of every certificate in `text`. `TRUSTED CERTIFICATE` blocks (OpenSSL's format with
/// trust settings appended, used by p11-kit's openssl bundles) are cut to the certificate itself.
pub(crate) fn certificates(text: &str) -> Vec<Vec<u8>> {
    pem_blocks(text)
        .into_iter()
        .filter_map(|b| match b.label.as_str() {
            "CERTIFICATE" | "X509 CERTIFICATE" => Some(b.der),
            "TRUSTED CERTIFICATE" => {
                let len = der_element_len(&b.der)?;
                Some(b.der[..len].to_vec())
            }
            _ => None,
        })
        .collect()
}

/// PEM text for one DER certificate: 64-column lines, trailing newline.
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Lowercase hex SHA-256 of `der`.
pub(crate) fn sha256_hex(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Canonical form of a fingerprint as people write it: lowercase, no `:` or spaces.
pub(crate) fn normalize_fingerprint(fp: &str) -> String {
    fp.chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether any certificate in `text` has SHA-256 fingerprint `fingerprint` (normalized).
pub(crate) fn text_contains(text: &str, fingerprint: &str) -> bool {
    certificates(text)
        .iter()
        .any(|der| sha256_hex(der) == fingerprint)
}

/// Fingerprints of every certificate in `text`.
pub(crate) fn fingerprints(text: &str) -> Vec<String> {
    certificates(text).iter().map(|d| sha256_hex(d)).collect()
}

/// `text` without the PEM certificate blocks whose fingerprint is `fingerprint`; every other line
/// is kept as it was.
pub(crate) fn without_certificate(text: &str, fingerprint: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut block: Option<String> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        match block.as_mut() {
            None if trimmed.starts_with("-----BEGIN ") => block = Some(line.to_string()),
            None => out.push_str(line),
            Some(b) => {
                b.push_str(line);
                if trimmed.starts_with("-----END ") {
                    if !text_contains(b, fingerprint) {
                        out.push_str(b);
                    }
                    block = None;
                }
            }
        }
    }
    if let Some(b) = block {
        out.push_str(&b); // an unterminated block is not ours to judge
    }
    out
}

/// Header length and total length of the DER element starting at `der[0]`.
fn der_header(der: &[u8]) -> Option<(usize, usize)> {
    let first_len = *der.get(1)?;
    if first_len < 0x80 {
        return Some((2, 2 + usize::from(first_len)));
    }
    let n = usize::from(first_len & 0x7f);
    if n == 0 || n > 4 {
        return None; // indefinite lengths are not DER; > 4 GiB is nonsense here
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*der.get(2 + i)?);
    }
    Some((2 + n, 2 + n + len))
}

/// Total length of the DER element at the start of `der`, if it fits.
pub(crate) fn der_element_len(der: &[u8]) -> Option<usize> {
    let (_, total) = der_header(der)?;
    (total <= der.len()).then_some(total)
}

/// The certificate's serial number as uppercase hex of its DER INTEGER content (what Windows'
/// `certutil` accepts as a certificate id).
#[cfg(any(target_os = "windows", test))]
pub(crate) fn serial_hex(cert_der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial INTEGER, ...
    if cert_der.first() != Some(&0x30) {
        return None;
    }
    let (hdr, _) = der_header(cert_der)?;
    let tbs = cert_der.get(hdr..)?;
    if tbs.first() != Some(&0x30) {
        return None;
    }
    let (tbs_hdr, _) = der_header(tbs)?;
    let mut rest = tbs.get(tbs_hdr..)?;
    if rest.first() == Some(&0xa0) {
        let (_, total) = der_header(rest)?;
        rest = rest.get(total..)?;
    }
    if rest.first() != Some(&0x02) {
        return None;
    }
    let (int_hdr, total) = der_header(rest)?;
    Some(hex(rest.get(int_hdr..total)?).to_uppercase())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_tail_length() {
        for len in 0..10 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
            let enc = base64_encode(&data);
            assert_eq!(base64_decode(&enc).unwrap(), data, "len {len}: {enc}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm9v\nYmE=").unwrap(), b"fooba");
        assert!(base64_decode("Zm9v*").is_none());
        assert!(base64_decode("Zm==9v").is_none());
    }

    #[test]
    fn blocks_are_found_between_comments_and_trusted_certificates_are_trimmed() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x07];
        let mut trusted = der.clone();
        trusted.extend_from_slice(&[0x30, 0x00]); // trust settings after the certificate
        let text = format!(
            "# a comment\n{}junk\n-----BEGIN TRUSTED CERTIFICATE-----\n{}\n-----END TRUSTED CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            der_to_pem(&der),
            base64_encode(&trusted)
        );
        assert_eq!(certificates(&text), vec![der.clone(), der.clone()]);
        assert!(text_contains(&text, &sha256_hex(&der)));
        assert!(!text_contains(&text, &sha256_hex(&trusted)));
    }

    #[test]
    fn one_certificate_is_cut_from_a_bundle() {
        let a = der_to_pem(&[0x30, 0x03, 0x02, 0x01, 0x01]);
        let b = der_to_pem(&[0x30, 0x03, 0x02, 0x01, 0x02]);
        let bundle = format!("# head\n{a}{b}{a}tail");
        let fp_a = sha256_hex(&[0x30, 0x03, 0x02, 0x01, 0x01]);
        assert_eq!(
            without_certificate(&bundle, &fp_a),
            format!("# head\n{b}tail")
        );
        assert_eq!(without_certificate(&bundle, "00"), bundle);
    }

    #[test]
    fn long_form_lengths_and_serials() {
        // SEQUENCE(long-form len 11) { SEQUENCE { [0] { INTEGER 2 }, INTEGER 0x00 0xff } }
        let cert = [
            0x30, 0x81, 0x0b, 0x30, 0x09, 0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x02, 0x00, 0xff,
        ];
        assert_eq!(der_element_len(&cert), Some(cert.len()));
        assert_eq!(der_element_len(&cert[..10]), None);
        assert_eq!(serial_hex(&cert).as_deref(), Some("00FF"));
        assert_eq!(der_element_len(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(normalize_fingerprint("AB:cd 01"), "abcd01");
    }
}
