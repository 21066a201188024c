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
    mem: Backing,
    /// Where the aligned contents start in `mem`.
    start: usize,
    cap: usize,
    len: usize,
}

/// The memory an [`AlignedBuf`] lives in.
enum Backing {
    /// From the allocator: the capacity plus [`ALIGN`] bytes of slack, so an aligned start
    /// always fits. The Vec never grows, so its address and the start stay valid.
    Heap(Vec<u8>),
    /// A slice of a huge-page region, that no other buffer uses (see [`huge`]).
    #[cfg(target_os = "linux")]
    Huge(huge::Slice),
}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to a multiple of [`ALIGN`]).
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.div_ceil(ALIGN).max(1) * ALIGN;
        let raw = vec![0u8; cap + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self {
            mem: Backing::Heap(raw),
            start,
            cap,
            len: 0,
        }
    }

    fn mem(&self) -> &[u8] {
        match &self.mem {
            Backing::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Backing::Huge(s) => s.bytes(),
        }
    }

    fn mem_mut(&mut self) -> &mut [u8] {
        match &mut self.mem {
            Backing::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Backing::Huge(s) => s.bytes_mut(),
        }
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Copy as much of `data` as fits; returns how many bytes were taken.
    pub(crate) fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.cap() - self.len);
        let at = self.start + self.len;
        self.mem_mut()[at..at + n].copy_from_slice(&data[..n]);
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
        &self.mem()[self.start..self.start + self.len]
    }

    /// The room after the contents, for a read to fill; [`AlignedBuf::advance`] then counts
    /// what it wrote.
    pub(crate) fn spare_mut(&mut self) -> &mut [u8] {
        let (at, end) = (self.start + self.len, self.start + self.cap());
        &mut self.mem_mut()[at..end]
    }

    /// Count `n` more bytes of the room as contents (at most what is left).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.cap());
    }

    /// The whole aligned capacity, for a direct read to fill.
    #[cfg(target_os = "linux")]
    pub(crate) fn whole_mut(&mut self) -> &mut [u8] {
        let (at, end) = (self.start, self.start + self.cap());
        &mut self.mem_mut()[at..end]
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

    /// An empty window: an idle one, or a new one. New windows of a size that divides a huge
    /// page come several to a huge-page region (the others kept idle): a direct write pins
    /// the pages it writes from, one 4 KiB page at a time in ordinary memory, one huge page at
    /// a time here (on downloads, 12% of barge's CPU went to pinning before).
    pub(crate) fn take(&self) -> AlignedBuf {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = idle.pop() {
            return w;
        }
        #[cfg(target_os = "linux")]
        if let Some(mut carved) = huge::carve(self.size)
            && let Some(first) = carved.pop()
        {
            let room = self.keep.saturating_sub(idle.len());
            idle.extend(carved.into_iter().take(room));
            return first;
        }
        drop(idle);
        AlignedBuf::new(self.size)
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

/// Huge-page regions (Linux's transparent huge pages), cut into window-sized slices.
#[cfg(target_os = "linux")]
mod huge {
    use std::ptr::NonNull;
    use std::sync::Arc;

    use super::{ALIGN, AlignedBuf, Backing};

    /// The size (and alignment) of an x86-64 or arm64 huge page.
    pub(super) const HUGE: usize = 2 * 1024 * 1024;

    /// One huge page's worth of anonymous memory, mapped at a [`HUGE`]-aligned address and
    /// marked for huge pages; unmapped when the last slice of it is dropped.
    struct Region(NonNull<u8>);

    // SAFETY: the region is plain memory owned by its slices; each slice reads and writes only
    // its own bytes, which no other slice covers (see `carve`).
    unsafe impl Send for Region {}
    // SAFETY: as above; a shared `&Region` gives no access to the bytes by itself.
    unsafe impl Sync for Region {}

    impl Region {
        fn map() -> Option<Self> {
            let span = 2 * HUGE;
            // SAFETY: a fresh anonymous private mapping; no memory of ours is touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    span,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return None;
            }
            // Keep the one aligned huge page inside the mapping; give back what lies around it.
            let addr = p as usize;
            let aligned = addr.next_multiple_of(HUGE);
            let (head, tail) = (aligned - addr, addr + span - (aligned + HUGE));
            // SAFETY: both ranges lie inside the mapping just made and outside the kept page.
            unsafe {
                if head > 0 {
                    libc::munmap(p, head);
                }
                if tail > 0 {
                    libc::munmap((aligned + HUGE) as *mut libc::c_void, tail);
                }
                // Without transparent huge pages this fails and the region keeps 4 KiB pages.
                libc::madvise(aligned as *mut libc::c_void, HUGE, libc::MADV_HUGEPAGE);
            }
            NonNull::new(aligned as *mut u8).map(Self)
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            // SAFETY: the page was mapped in `map` and no slice of it is left.
            unsafe { libc::munmap(self.0.as_ptr().cast(), HUGE) };
        }
    }

    /// `len` bytes at `at` in a region, used by one buffer only.
    pub(super) struct Slice {
        region: Arc<Region>,
        at: usize,
        len: usize,
    }

    impl Slice {
        pub(super) fn bytes(&self) -> &[u8] {
            // SAFETY: inside the mapped region (checked in `carve`), which lives as long as the
            // Arc; mapped memory reads as zeroes before it is written.
            unsafe { std::slice::from_raw_parts(self.region.0.as_ptr().add(self.at), self.len) }
        }

        pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
            // SAFETY: as in `bytes`; and no other slice covers these bytes, so `&mut self` is
            // the only access to them.
            unsafe { std::slice::from_raw_parts_mut(self.region.0.as_ptr().add(self.at), self.len) }
        }
    }

    /// A new huge-page region cut into buffers of `size` bytes, or `None` where `size` does not
    /// divide a huge page into a few (2 to 4) buffers, or the mapping failed.
    pub(super) fn carve(size: usize) -> Option<Vec<AlignedBuf>> {
        if size == 0 || !HUGE.is_multiple_of(size) || size < HUGE / 4 || !size.is_multiple_of(ALIGN)
        {
            return None;
        }
        let region = Arc::new(Region::map()?);
        Some(
            (0..HUGE / size)
                .map(|i| AlignedBuf {
                    mem: Backing::Huge(Slice {
                        region: region.clone(),
                        at: i * size,
                        len: size,
                    }),
                    start: 0,
                    cap: size,
                    len: 0,
                })
                .collect(),
        )
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

    #[cfg(target_os = "linux")]
    #[test]
    fn megabyte_windows_share_huge_pages_and_keep_their_own_bytes() {
        const MIB: usize = 1024 * 1024;
        let pool = Windows::new(MIB, 4);
        let (mut a, mut b) = (pool.take(), pool.take());
        let (pa, pb) = (
            a.spare_mut().as_ptr() as usize,
            b.spare_mut().as_ptr() as usize,
        );
        assert_eq!(
            pa.min(pb) % huge::HUGE,
            0,
            "the region starts on a huge page"
        );
        assert_eq!(pa.abs_diff(pb), MIB, "the two halves of one huge page");
        assert_eq!((a.cap(), b.cap()), (MIB, MIB));
        let ones = vec![1u8; MIB];
        let twos = vec![2u8; MIB];
        assert_eq!(a.fill(&ones), MIB);
        assert_eq!(b.fill(&twos[..10]), 10);
        assert!(a.is_full() && !b.is_full());
        assert!(a.as_slice().iter().all(|&x| x == 1));
        assert_eq!(b.as_slice(), &twos[..10]);
        // Each window outlives the other, and comes back to the pool empty.
        let (fa, fb) = (pool.freeze(a), pool.freeze(b));
        drop(fa);
        assert_eq!(&fb[..], &twos[..10]);
        drop(fb);
        assert_eq!(pool.idle(), 2);
        let c = pool.take();
        assert!(c.is_empty());
        // A pool that keeps no idle window does not keep a new region's other half either.
        let small = Windows::new(MIB, 0);
        let one = small.take();
        assert_eq!(small.idle(), 0);
        drop(one);
        // A size that does not divide a huge page into a few windows comes from the heap.
        assert!(huge::carve(3 * ALIGN).is_none());
        assert!(huge::carve(2 * ALIGN).is_none());
    }
}
