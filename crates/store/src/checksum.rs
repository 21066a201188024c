//! CRC32C helpers: what barge sends with each part and how it checks the assembled object.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// CRC32C of `data` (hardware-accelerated where the CPU has it).
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The CRC32C of data that continues data whose CRC32C is `crc`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
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
    format!("{}-{}", crc32c_b64(crc32c::crc32c(&buf)), parts.len())
}

/// The CRC32C of a whole object from the CRC32Cs of its consecutive parts and their lengths.
pub fn combine_crc32c(parts: &[(u32, u64)]) -> u32 {
    let mut acc: Option<u32> = None;
    for &(crc, len) in parts {
        acc = Some(match acc {
            None => crc,
            Some(a) => crc32c::crc32c_combine(a, crc, len as usize),
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

    #[test]
    fn combine_matches_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (a, b) = data.split_at(3_333);
        let combined = combine_crc32c(&[(crc32c(a), a.len() as u64), (crc32c(b), b.len() as u64)]);
        assert_eq!(combined, crc32c(&data));
    }

    #[test]
    fn checksum_comparison() {
        assert!(same_checksum("abc=-3", "abc=-3"));
        assert!(same_checksum("abc=", "abc=-3"));
        assert!(!same_checksum("abc=-2", "abc=-3"));
        assert!(!same_checksum("abd=-3", "abc=-3"));
    }
}
