//! CRC32C helpers: what barge sends with each part and how it checks the assembled object.
//!
//! The CRC itself is `crc-fast`'s CRC-32/ISCSI: it folds with carry-less multiplies (AVX-512
//! where the CPU has it): 1.3 to 3 times the speed of the `crc32c` crate's SSE4.2 loop on the
//! benchmark VMs (see BENCHMARKS.md), and every byte barge moves through itself is summed once.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use crc_fast::CrcAlgorithm::Crc32Iscsi;

/// CRC-32/ISCSI's final XOR: a finished CRC32C XOR this is the running state it came from.
const XOROUT: u32 = 0xffff_ffff;

/// CRC32C of `data` (hardware-accelerated where the CPU has it).
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// The CRC32C of data that continues data whose CRC32C is `crc`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    let mut digest = crc_fast::Digest::new_with_init_state(Crc32Iscsi, u64::from(crc ^ XOROUT));
    digest.update(data);
    // A 32-bit CRC's state and result fit in 32 bits.
    digest.finalize() as u32
}

/// The wire form S3 uses: the big-endian bytes, base64.
pub fn crc32c_b64(crc: u32) -> String {
    STANDARD.encode(crc.to_be_bytes())
}

pub fn crc32c_from_b64(s: &str) -> Option<u32> {
    let raw = STANDARD.decode(s.trim()).ok()?;
    let bytes: [u8; 4] = raw.as_slice().try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// The composite checksum S3 reports for a multipart object: the CRC32C of the concatenated
/// big-endian part checksums, base64, with `-N` appended.
pub fn composite_crc32c(parts: &[u32]) -> String {
    let mut buf = Vec::with_capacity(parts.len() * 4);
    for p in parts {
        buf.extend_from_slice(&p.to_be_bytes());
    }
    format!("{}-{}", crc32c_b64(crc32c(&buf)), parts.len())
}

/// The CRC32C of a whole object from the CRC32Cs of its consecutive parts and their lengths.
pub fn combine_crc32c(parts: &[(u32, u64)]) -> u32 {
    let mut acc: Option<u32> = None;
    for &(crc, len) in parts {
        acc = Some(match acc {
            None => crc,
            // 32-bit CRCs combine into a 32-bit CRC.
            Some(a) => {
                crc_fast::checksum_combine(Crc32Iscsi, u64::from(a), u64::from(crc), len) as u32
            }
        });
    }
    acc.unwrap_or(0)
}

/// Compare a checksum the store reported with the one barge expects. Stores differ in whether
/// they append the `-N` part count, so only the base64 value is compared, plus the count where both
/// carry one.
pub fn same_checksum(reported: &str, expected: &str) -> bool {
    let (r_val, r_n) = split_count(reported);
    let (e_val, e_n) = split_count(expected);
    r_val == e_val && (r_n.is_none() || e_n.is_none() || r_n == e_n)
}

fn split_count(s: &str) -> (&str, Option<&str>) {
    match s.trim().rsplit_once('-') {
        Some((v, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => (v, Some(n)),
        _ => (s.trim(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64_round_trip() {
        let c = crc32c(b"hello world");
        assert_eq!(crc32c_from_b64(&crc32c_b64(c)), Some(c));
        assert_eq!(crc32c_from_b64("not base64!"), None);
    }

    /// Values from the CRC catalogue (CRC-32/ISCSI's check value), from S3 (what it reports for
    /// "hello world") and from the `crc32c` crate barge used before; appended in pieces of
    /// every size around the vector widths, the result is the same as in one go.
    #[test]
    fn known_values_and_appends() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_b64(crc32c(b"hello world")), "yZRlqg==");
        assert_eq!(crc32c(b""), 0);
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(crc32c(&data), 0xa22b_e05a);
        for cut in [
            0, 1, 7, 15, 16, 17, 63, 64, 65, 255, 256, 4095, 4096, 100_001, 300_000,
        ] {
            let (a, b) = data.split_at(cut);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data), "cut at {cut}");
        }
        let mut crc = 0;
        for piece in data.chunks(1_000) {
            crc = crc32c_append(crc, piece);
        }
        assert_eq!(crc, crc32c(&data));
    }

    #[test]
    fn combine_matches_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (a, b) = data.split_at(3_333);
        let combined = combine_crc32c(&[(crc32c(a), a.len() as u64), (crc32c(b), b.len() as u64)]);
        assert_eq!(combined, crc32c(&data));
        let (b1, b2) = b.split_at(5_000);
        let with_empty = combine_crc32c(&[
            (crc32c(a), a.len() as u64),
            (crc32c(b""), 0),
            (crc32c(b1), b1.len() as u64),
            (crc32c(b2), b2.len() as u64),
        ]);
        assert_eq!(with_empty, crc32c(&data));
    }

    #[test]
    fn checksum_comparison() {
        assert!(same_checksum("abc=-3", "abc=-3"));
        assert!(same_checksum("abc=", "abc=-3"));
        assert!(!same_checksum("abc=-2", "abc=-3"));
        assert!(!same_checksum("abd=-3", "abc=-3"));
    }
}
