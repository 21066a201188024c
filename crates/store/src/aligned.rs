//! Buffers whose bytes start at a block-aligned address, and a pool that hands them out as
//! [`Bytes`].
//!
//! A file opened with `O_DIRECT` (see `local/direct.rs`) can be written only from memory aligned
//! to the device's block. The S3 backend reads ranged GETs from the socket straight into pooled
//! windows of this kind ([`Windows`]), so a download's chunks reach the local file's direct
//! writes without being copied into an aligned buffer first; each window goes back to its pool
//! when the last `Bytes` that shows it is dropped.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Alignment of buffer addresses, offsets and lengths for direct writes.
pub(crate) const ALIGN: usize = 4096;

/// A fixed-capacity byte buffer whose contents start at an [`ALIGN`]-aligned address.
pub(crate) struct AlignedBuf {
    /// Capacity plus [`ALIGN`] bytes of slack, so an aligned start always fits.
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to a multiple of [`ALIGN`]).
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.div_ceil(ALIGN).max(1) * ALIGN;
        let raw = vec![0u8; cap + ALIGN];
        // The Vec never grows, so its address and this offset stay valid.
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start, len: 0 }
    }

    pub(crate) fn cap(&self) -> usize {
        self.raw.len() - ALIGN
    }

    /// Copy as much of `data` as fits; returns how many bytes were taken.
    pub(crate) fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.cap() - self.len);
        let at = self.start + self.len;
        self.raw[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.cap()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// The room after the contents, for a read to fill; [`AlignedBuf::advance`] then counts
    /// what it wrote.
    pub(crate) fn spare_mut(&mut self) -> &mut [u8] {
        let (at, end) = (self.start + self.len, self.start + self.cap());
        &mut self.raw[at..end]
    }

    /// Count `n` more bytes of the room as contents (at most what is left).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.cap());
    }

    /// The whole aligned capacity, for a direct read to fill.
    #[cfg(target_os = "linux")]
    pub(crate) fn whole_mut(&mut self) -> &mut [u8] {
        let cap = self.cap();
        &mut self.raw[self.start..self.start + cap]
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Aligned windows of one size, reused: a window is allocated (and its pages faulted in) once,
/// not once per chunk.
pub(crate) struct Windows {
    size: usize,
    /// How many idle windows are kept; more are freed when they come back.
    keep: usize,
    idle: Mutex<Vec<AlignedBuf>>,
}

impl Windows {
    pub(crate) fn new(size: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            size,
            keep,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// An empty window: an idle one, or a new one.
    pub(crate) fn take(&self) -> AlignedBuf {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        idle.unwrap_or_else(|| AlignedBuf::new(self.size))
    }

    fn give_back(&self, mut buf: AlignedBuf) {
        buf.clear();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.keep {
            idle.push(buf);
        }
    }

    /// The window's contents as `Bytes`; the window returns to this pool when the last view of
    /// them is dropped.
    pub(crate) fn freeze(self: &Arc<Self>, buf: AlignedBuf) -> Bytes {
        Bytes::from_owner(Lent {
            buf: Some(buf),
            pool: self.clone(),
        })
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// A window lent out as `Bytes`.
struct Lent {
    buf: Option<AlignedBuf>,
    pool: Arc<Windows>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], AlignedBuf::as_slice)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
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
        b.spare_mut()[..5].copy_from_slice(&data[10..15]);
        b.advance(5);
        assert_eq!(b.as_slice(), &data[..15]);
        assert_eq!(b.spare_mut().len(), 2 * ALIGN - 15);
    }

    #[test]
    fn windows_come_back_when_their_bytes_are_dropped() {
        let pool = Windows::new(2 * ALIGN, 1);
        let mut w = pool.take();
        w.fill(b"hello");
        let first = w.as_slice().as_ptr();
        let bytes = pool.freeze(w);
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(bytes.as_ptr() as usize % ALIGN, 0, "the bytes stay aligned");
        let view = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a view still shows the window");
        assert_eq!(&view[..], b"el");
        drop(view);
        assert_eq!(pool.idle(), 1);
        let again = pool.take();
        assert!(again.is_empty(), "a window comes back empty");
        assert_eq!(again.as_slice().as_ptr(), first, "and is the same memory");
        // Beyond `keep`, windows that come back are freed.
        let (a, b) = (pool.freeze(again), pool.freeze(pool.take()));
        drop((a, b));
        assert_eq!(pool.idle(), 1);
    }
}
