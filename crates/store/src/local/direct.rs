//! Writing downloaded parts around the page cache (Linux `O_DIRECT`).
//!
//! A buffered write copies every byte into the page cache, and the fsync that makes the file
//! durable then writes it all out again from there: for a download that is most of barge's CPU
//! after the network itself, and it pushes other programs' data out of memory. With `O_DIRECT`
//! the disk reads the part straight from barge's buffer, so the fsync at completion only has the
//! file's metadata and an unaligned tail left to flush.
//!
//! `O_DIRECT` wants the buffer's address, the file offset and the length aligned to the device's
//! block size; [`ALIGN`] (4 KiB) covers every common device. What cannot be aligned (a part that
//! starts at an odd offset, the last bytes of a file) and every file system that refuses
//! `O_DIRECT` (tmpfs, some network file systems) goes through the page cache as before.

use std::fs::{File, OpenOptions};
use std::path::Path;

/// Alignment of buffer addresses, offsets and lengths for direct writes.
pub(super) const ALIGN: usize = 4096;

/// A fixed-capacity byte buffer whose contents start at an [`ALIGN`]-aligned address.
pub(super) struct AlignedBuf {
    /// Capacity plus [`ALIGN`] bytes of slack, so an aligned start always fits.
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to a multiple of [`ALIGN`]).
    pub(super) fn new(cap: usize) -> Self {
        let cap = cap.div_ceil(ALIGN).max(1) * ALIGN;
        let raw = vec![0u8; cap + ALIGN];
        // The Vec never grows, so its address and this offset stay valid.
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start, len: 0 }
    }

    fn cap(&self) -> usize {
        self.raw.len() - ALIGN
    }

    /// Copy as much of `data` as fits; returns how many bytes were taken.
    pub(super) fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.cap() - self.len);
        let at = self.start + self.len;
        self.raw[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    pub(super) fn is_full(&self) -> bool {
        self.len == self.cap()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// Open `path` for direct writes; `None` where the platform or the file system has no such mode.
#[cfg(target_os = "linux")]
pub(super) fn open(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!("O_DIRECT refused ({e}); writing through the page cache");
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn open(_path: &Path) -> Option<File> {
    None
}

/// Whether `len` bytes at `offset` can be written directly from an aligned buffer.
pub(super) fn aligned(offset: u64, len: usize) -> bool {
    offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffer_takes_what_fits_at_an_aligned_address() {
        let mut b = AlignedBuf::new(5000);
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        assert!(b.is_empty());
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        // Rounded up to two blocks.
        assert_eq!(b.fill(&data), 2 * ALIGN);
        assert!(b.is_full());
        assert_eq!(b.as_slice(), &data[..2 * ALIGN]);
        b.clear();
        assert_eq!(b.fill(&data[..10]), 10);
        assert_eq!(b.as_slice(), &data[..10]);
        assert!(!aligned(0, 10));
        assert!(aligned(8192, 2 * ALIGN));
        assert!(!aligned(100, ALIGN));
    }
}
