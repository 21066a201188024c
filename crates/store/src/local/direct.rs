//! Writing downloaded parts, and reading uploaded parts that are not cached, around the page
//! cache (Linux `O_DIRECT`).
//!
//! A buffered write copies every byte into the page cache, and the fsync that makes the file
//! durable then writes it all out again from there: for a download that is most of barge's CPU
//! after the network itself, and it pushes other programs' data out of memory. With `O_DIRECT`
//! the disk reads the part straight from barge's buffer, so the fsync at completion only has the
//! file's metadata and an unaligned tail left to flush.
//!
//! Reads go the same way only for the parts of a source file that are mostly not in the page
//! cache (the kernel says, with `cachestat`, Linux 6.5): such a part is read by the disk straight
//! into an aligned window, without the kernel filling, copying and later evicting page-cache pages
//! for data barge reads once. A part that is cached stays a memory copy (reading it from the disk
//! again would be slower), and so does every part where the kernel cannot tell.
//!
//! `O_DIRECT` wants the buffer's address, the file offset and the length aligned to the device's
//! block size; [`ALIGN`] (4 KiB) covers every common device. What cannot be aligned (a part that
//! starts at an odd offset, the last bytes of a file) and every file system that refuses
//! `O_DIRECT` (tmpfs, some network file systems) goes through the page cache as before.

use std::fs::{File, OpenOptions};
use std::path::Path;

pub(super) use crate::aligned::{ALIGN, AlignedBuf};

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

/// Open `path` for direct reads, if the platform and file system allow it and it is still the
/// file `same_as` (an open descriptor of it) was opened on.
#[cfg(target_os = "linux")]
pub(super) fn open_read(path: &Path, same_as: &File) -> Option<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!("O_DIRECT refused ({e}); reading through the page cache");
            return None;
        }
    };
    let (a, b) = (f.metadata().ok()?, same_as.metadata().ok()?);
    (a.dev() == b.dev() && a.ino() == b.ino()).then_some(f)
}

/// Whether fewer than half of the pages of `len` bytes at `offset` of `f` are in the page cache,
/// so that reading them around it is worth it. `false` where the kernel cannot tell (before
/// Linux 6.5, or a sandbox that forbids the call).
#[cfg(target_os = "linux")]
pub(super) fn mostly_uncached(f: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    /// `cachestat(2)`'s number: the same on every architecture (asm-generic), not yet in `libc`.
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    let range = Range { off: offset, len };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads `range` and writes one `Stat` (the kernel's struct layout, five
    // u64), both live for the call; the descriptor is open.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    // SAFETY: sysconf only reads a system constant.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let pages = len.div_ceil(page.max(1));
    r == 0 && stat.nr_cache * 2 < pages
}

/// An empty buffer with room for `cap` bytes whose contents start at an [`ALIGN`]-aligned
/// address. It stays aligned through `freeze`, `try_into_mut` and `clear` (bytes keeps the
/// offset), so a part buffer handed back to the pool can be read into directly again.
#[cfg(target_os = "linux")]
pub(super) fn aligned_bytes_mut(cap: usize) -> bytes::BytesMut {
    use bytes::Buf;
    let mut b = bytes::BytesMut::with_capacity(cap + ALIGN);
    let skip = b.as_ptr().align_offset(ALIGN);
    b.resize(skip, 0);
    b.advance(skip);
    b
}

/// Read up to `dst.len()` bytes (at most [`READ_WINDOW`]) of `d` from `offset` around the page
/// cache. Straight into `dst` where its address, `offset` and length are block-aligned (a part
/// of a pooled buffer from [`aligned_bytes_mut`]); otherwise the disk fills this thread's
/// aligned window with the enclosing blocks and the requested bytes are copied out. Returns how
/// many bytes were read, 0 at the end of the file.
#[cfg(target_os = "linux")]
pub(super) fn read_at(
    d: &File,
    dst: &mut [std::mem::MaybeUninit<u8>],
    offset: u64,
) -> std::io::Result<usize> {
    use std::cell::RefCell;
    use std::os::unix::fs::FileExt;
    thread_local! {
        /// Tokio's blocking threads are reused: one window each, allocated once.
        static WINDOW: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
    }
    let want = dst.len().min(READ_WINDOW);
    if (dst.as_ptr() as usize).is_multiple_of(ALIGN) && aligned(offset, want) {
        return pread_uninit(d, &mut dst[..want], offset);
    }
    let start = offset - offset % ALIGN as u64;
    let skip = (offset - start) as usize;
    let span = (skip + want).div_ceil(ALIGN) * ALIGN;
    WINDOW.with_borrow_mut(|w| {
        let window = w
            .get_or_insert_with(|| AlignedBuf::new(READ_WINDOW + ALIGN))
            .whole_mut();
        let n = loop {
            match d.read_at(&mut window[..span], start) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        let got = n.saturating_sub(skip).min(want);
        dst[..got].write_copy_of_slice(&window[skip..skip + got]);
        Ok(got)
    })
}

/// `pread` of `f` at `offset` into memory not yet initialised, retried when interrupted: how many
/// bytes it wrote at the start of `dst` (0 at the end of the file).
#[cfg(target_os = "linux")]
pub(super) fn pread_uninit(
    f: &File,
    dst: &mut [std::mem::MaybeUninit<u8>],
    offset: u64,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let at = i64::try_from(offset)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: the pointer and length describe `dst`, memory the caller lends for this read;
        // pread writes at most that many bytes there.
        let n = unsafe { libc::pread(f.as_raw_fd(), dst.as_mut_ptr().cast(), dst.len(), at) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Source files are read this much at a time, and each window checksummed while it is in the CPU
/// cache; the most one direct read returns.
pub(super) const READ_WINDOW: usize = 1024 * 1024;

/// Whether `len` bytes at `offset` can be written directly from an aligned buffer.
pub(super) fn aligned(offset: u64, len: usize) -> bool {
    offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_needs_offset_and_length_on_blocks() {
        assert!(!aligned(0, 10));
        assert!(aligned(8192, 2 * ALIGN));
        assert!(!aligned(100, ALIGN));
    }
}
