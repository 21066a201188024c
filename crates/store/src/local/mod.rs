//! The local file system as a store.
//!
//! Keys are paths; the bucket is empty. A multipart "upload" is a hidden temporary file beside the
//! destination (`.NAME.UPLOADID.barge-tmp`), written at each part's offset and renamed into place
//! only when complete, so a destination never exists half-written.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use crate::checksum::crc32c_b64;
use crate::{
    Capabilities, ChecksumMode, ObjectAttrs, ObjectMeta, ObjectPath, PartReceipt, PartSpec,
    PendingUpload, Pin, PutReceipt, Result, Store, StoreError, UploadRef,
};

mod direct;

const TMP_SUFFIX: &str = ".barge-tmp";

#[derive(Debug)]
pub struct LocalStore {
    caps: Capabilities,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalStore {
    pub fn new() -> Self {
        Self {
            caps: Capabilities {
                server_side_copy: false,
                part_checksums: true,
                versions: false,
                metadata: false,
                min_part_size: 1,
                max_part_size: u64::MAX,
                max_parts: 1_000_000,
                max_single_put: u64::MAX,
                max_single_copy: 0,
                copies_parts: false,
                max_object_size: None,
                lists_parts: false,
                streams_parts: true,
            },
        }
    }
}

/// A version tag for a local file: its modification time and size.
fn synthetic_etag(md: &fs::Metadata) -> String {
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{:x}-{:x}\"", mtime, md.len())
}

/// The CRC32C of bytes about to be written; a Permanent error (nothing written) when the caller
/// sent one and it differs.
fn checked_crc(
    data: &[u8],
    sent: Option<u32>,
    op: &str,
    detail: impl FnOnce() -> String,
) -> Result<u32> {
    let crc = crate::checksum::crc32c(data);
    if sent.is_some_and(|c| c != crc) {
        return Err(StoreError::Permanent {
            store: "local".into(),
            op: op.into(),
            detail: detail(),
        });
    }
    Ok(crc)
}

/// A temporary name is the destination's name, the upload id and a suffix; a name too long to
/// take them (file systems allow 255 bytes) is cut short and marked with `~`, so a legal name
/// always has a legal temporary name. Cut or not, the same destination and id give the same
/// temporary name, and so does what `parse_tmp` reads back from it.
const NAME_MAX: usize = 255;

fn tmp_name(name: &str, upload_id: &str) -> String {
    let room = NAME_MAX.saturating_sub(2 + upload_id.len() + TMP_SUFFIX.len());
    if name.len() <= room {
        return format!(".{name}.{upload_id}{TMP_SUFFIX}");
    }
    let mut cut = room.saturating_sub(1);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}~.{upload_id}{TMP_SUFFIX}", &name[..cut])
}

fn tmp_path(dest: &Path, upload_id: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(tmp_name(&name, upload_id))
}

/// The destination a temporary file belongs to (its name cut short where `tmp_name` cut it),
/// and its upload id. Only barge's own names: a dot, a name, a 32-digit hex id, the suffix.
fn parse_tmp(tmp: &Path) -> Option<(PathBuf, String)> {
    let name = tmp.file_name()?.to_str()?;
    let inner = name.strip_prefix('.')?.strip_suffix(TMP_SUFFIX)?;
    let (dest_name, id) = inner.rsplit_once('.')?;
    if dest_name.is_empty() || id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((tmp.with_file_name(dest_name), id.to_string()))
}

fn not_found(path: &str) -> StoreError {
    StoreError::NotFound {
        store: "local".into(),
        path: path.to_string(),
    }
}

fn io_err(path: &str, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        not_found(path)
    } else {
        StoreError::io(path, e)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Permanent {
            store: "local".into(),
            op: "file I/O".into(),
            detail: e.to_string(),
        })?
}

fn meta_of(key: &str, md: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        path: ObjectPath::new("", key),
        size: md.len(),
        etag: Some(synthetic_etag(md)),
        version_id: None,
        last_modified: md.modified().ok(),
        attrs: ObjectAttrs::default(),
        crc32c: None,
    }
}

/// Regular files are listed; symlinks, devices, sockets and pipes are passed over and reported
/// (a symlink may lead out of the folder or round in a loop: copy its target by naming it), and
/// so are barge's own temporary files of unfinished downloads.
fn walk(dir: &Path, out: &mut crate::Listing) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let p = entry.path();
        let shown = p.to_string_lossy().into_owned();
        let skip = |out: &mut crate::Listing, reason: &str| {
            out.skipped.push(crate::SkippedEntry {
                path: shown.clone(),
                reason: reason.into(),
            })
        };
        if ft.is_dir() {
            walk(&p, out)?;
        } else if ft.is_file() {
            if parse_tmp(&p).is_some() {
                skip(out, "a temporary file of an unfinished barge download");
                continue;
            }
            let md = entry.metadata()?;
            out.objects.push(meta_of(&shown, &md));
        } else if ft.is_symlink() {
            skip(
                out,
                "a symbolic link (not followed: name its target to copy it)",
            );
        } else {
            skip(out, "not a regular file (a device, socket or pipe)");
        }
    }
    Ok(())
}

/// Open an upload's temporary file for writing; a missing one means the upload is gone.
fn open_upload(tmp: &Path, upload: &UploadRef) -> Result<File> {
    OpenOptions::new().write(true).open(tmp).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::NoSuchUpload {
                store: "local".into(),
                path: upload.path.key.clone(),
                upload_id: upload.upload_id.clone(),
            }
        } else {
            StoreError::io(&upload.path.key, e)
        }
    })
}

/// Ask the kernel to begin writing a byte range of a file to disk, and return at once (Linux's
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`); a no-op elsewhere. Durability still comes from the
/// fsync at completion; this only lets the disk work while the network does.
#[cfg(target_os = "linux")]
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the lifetime of `f`; the call reads no memory of ours.
    let r = unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r != 0 {
        tracing::debug!(
            "sync_file_range: {} (the fsync at completion still makes the file durable)",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_f: &File, _offset: u64, _len: u64) {}

/// Write one batch of a part at `at`: straight to disk when it is aligned and a direct
/// descriptor is open, else (or if the direct write fails) through the page cache. Returns
/// whether it went straight to disk.
fn write_batch(f: &File, direct: Option<&File>, data: &[u8], at: u64) -> std::io::Result<bool> {
    if let Some(d) = direct
        && direct::aligned(at, data.len())
    {
        match d.write_all_at(data, at) {
            Ok(()) => {
                #[cfg(test)]
                tests::DIRECT_BYTES
                    .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                return Ok(true);
            }
            Err(e) => tracing::debug!("direct write failed ({e}); writing through the page cache"),
        }
    }
    f.write_all_at(data, at)?;
    Ok(false)
}

/// [`write_batch`] on the blocking pool, for a part's file (`files`: its descriptors, plain and
/// direct); hands `batch` back for reuse, with whether it went straight to disk.
async fn write_on_pool<B: AsRef<[u8]> + Send + 'static>(
    files: &Arc<(File, Option<File>)>,
    key: &str,
    batch: B,
    at: u64,
) -> Result<(B, bool)> {
    let (files, key) = (files.clone(), key.to_string());
    blocking(move || {
        let went_direct = write_batch(&files.0, files.1.as_ref(), batch.as_ref(), at)
            .map_err(|e| StoreError::io(&key, e))?;
        Ok((batch, went_direct))
    })
    .await
}

/// Fill `buf` with exactly `len` bytes of `f` (the file at `path`) from `offset`; returns their
/// CRC32C, computed window by window while each is in the CPU cache. The buffer comes back from
/// the part pool already allocated; reading into its spare capacity spares a zero-fill of every
/// part (a pass over all the data as costly as the copy out of the page cache itself). A range
/// that is mostly not cached is read around the page cache (see [`direct`]).
#[cfg(target_os = "linux")]
fn read_exact_at(
    f: &File,
    path: &Path,
    buf: &mut bytes::BytesMut,
    len: usize,
    offset: u64,
) -> std::io::Result<u32> {
    buf.clear();
    if buf.capacity() < len {
        *buf = direct::aligned_bytes_mut(len);
    }
    let spare = &mut buf.spare_capacity_mut()[..len];
    let (mut done, mut crc) = (0, 0);
    let mut direct = if direct::mostly_uncached(f, offset, len as u64) {
        direct::open_read(path, f)
    } else {
        None
    };
    while done < len {
        let at = offset + done as u64;
        let want = (len - done).min(direct::READ_WINDOW);
        let dst = &mut spare[done..done + want];
        let n = if let Some(d) = &direct {
            match direct::read_at(d, dst, at) {
                Ok(n) => {
                    #[cfg(test)]
                    tests::DIRECT_READ_BYTES
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    n
                }
                Err(e) => {
                    tracing::debug!("direct read failed ({e}); reading through the page cache");
                    direct = None;
                    continue;
                }
            }
        } else {
            direct::pread_uninit(f, dst, at)?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // SAFETY: the read just initialised these `n` bytes.
        let fresh = unsafe { std::slice::from_raw_parts(dst.as_ptr().cast::<u8>(), n) };
        crc = crate::checksum::crc32c_append(crc, fresh);
        done += n;
    }
    // SAFETY: the reads initialised all `len` bytes (the loop only ends when `done == len`).
    unsafe { buf.set_len(len) };
    Ok(crc)
}

#[cfg(not(target_os = "linux"))]
fn read_exact_at(
    f: &File,
    _path: &Path,
    buf: &mut bytes::BytesMut,
    len: usize,
    offset: u64,
) -> std::io::Result<u32> {
    buf.clear();
    buf.resize(len, 0);
    f.read_exact_at(buf, offset)?;
    Ok(crate::checksum::crc32c(buf))
}

fn write_new(tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = tmp.parent() {
        fs::create_dir_all(parent)?;
    }
    let f = File::create(tmp)?;
    f.write_all_at(data, 0)?;
    f.sync_all()
}

#[async_trait]
impl Store for LocalStore {
    fn name(&self) -> &str {
        "local"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn service_identity(&self) -> Option<&str> {
        None
    }

    fn endpoint(&self) -> crate::Endpoint {
        crate::Endpoint::Local
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        let key = path.key.clone();
        blocking(move || {
            let md = fs::metadata(&key).map_err(|e| io_err(&key, e))?;
            if !md.is_file() {
                return Err(StoreError::Permanent {
                    store: "local".into(),
                    op: "stat".into(),
                    detail: format!("{key} is not a regular file (use -r for a folder)"),
                });
            }
            Ok(meta_of(&key, &md))
        })
        .await
    }

    async fn list(&self, _bucket: &str, prefix: &str) -> Result<crate::Listing> {
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = crate::Listing::default();
            let p = Path::new(&prefix);
            match fs::metadata(p) {
                Ok(md) if md.is_dir() => walk(p, &mut out).map_err(|e| io_err(&prefix, e))?,
                Ok(md) if md.is_file() => out.objects.push(meta_of(&prefix, &md)),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(not_found(&prefix));
                }
                Err(e) => return Err(StoreError::io(&prefix, e)),
            }
            out.objects.sort_by(|a, b| a.path.key.cmp(&b.path.key));
            Ok(out)
        })
        .await
    }

    async fn get_range(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        Ok(self
            .get_range_into(path, pin, offset, len, bytes::BytesMut::new())
            .await?
            .0)
    }

    async fn get_range_into(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
        mut buf: bytes::BytesMut,
    ) -> Result<(Bytes, u32)> {
        let key = path.key.clone();
        let pin = pin.clone();
        blocking(move || {
            let f = File::open(&key).map_err(|e| io_err(&key, e))?;
            let check = |f: &File| -> Result<()> {
                let md = f.metadata().map_err(|e| StoreError::io(&key, e))?;
                if pin
                    .etag
                    .as_deref()
                    .is_some_and(|e| e != synthetic_etag(&md))
                {
                    return Err(StoreError::SourceChanged {
                        store: "local".into(),
                        path: key.clone(),
                    });
                }
                Ok(())
            };
            check(&f)?;
            let crc = read_exact_at(&f, Path::new(&key), &mut buf, len as usize, offset).map_err(
                |e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        StoreError::SourceChanged {
                            store: "local".into(),
                            path: key.clone(),
                        }
                    } else {
                        StoreError::io(&key, e)
                    }
                },
            )?;
            // The file may have been rewritten while it was read.
            check(&f)?;
            Ok((buf.freeze(), crc))
        })
        .await
    }

    async fn put(
        &self,
        path: &ObjectPath,
        data: Bytes,
        _attrs: &ObjectAttrs,
        crc32c: Option<u32>,
    ) -> Result<PutReceipt> {
        let dest = PathBuf::from(&path.key);
        blocking(move || {
            checked_crc(&data, crc32c, "write", || {
                format!(
                    "{}: the bytes do not match the CRC32C sent with them",
                    dest.display()
                )
            })?;
            let tmp = tmp_path(&dest, &uuid::Uuid::new_v4().simple().to_string());
            let shown = dest.to_string_lossy().into_owned();
            write_new(&tmp, &data).map_err(|e| StoreError::io(&shown, e))?;
            fs::rename(&tmp, &dest).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                StoreError::io(&shown, e)
            })?;
            Ok(PutReceipt::default())
        })
        .await
    }

    async fn create_upload(
        &self,
        path: &ObjectPath,
        _attrs: &ObjectAttrs,
        _checksums: ChecksumMode,
    ) -> Result<UploadRef> {
        let dest = PathBuf::from(&path.key);
        let upload_id = uuid::Uuid::new_v4().simple().to_string();
        let tmp = tmp_path(&dest, &upload_id);
        let shown = path.key.clone();
        blocking(move || {
            if dest.is_dir() {
                return Err(StoreError::Permanent {
                    store: "local".into(),
                    op: "create".into(),
                    detail: format!("{shown} is a folder"),
                });
            }
            write_new(&tmp, &[]).map_err(|e| StoreError::io(&shown, e))
        })
        .await?;
        Ok(UploadRef {
            path: path.clone(),
            upload_id,
        })
    }

    async fn upload_part(
        &self,
        upload: &UploadRef,
        part: &PartSpec,
        data: Bytes,
        crc32c: Option<u32>,
    ) -> Result<PartReceipt> {
        let tmp = tmp_path(Path::new(&upload.path.key), &upload.upload_id);
        let upload = upload.clone();
        let part = *part;
        blocking(move || {
            let f = open_upload(&tmp, &upload)?;
            let crc = checked_crc(&data, crc32c, "write part", || {
                format!(
                    "{}: part {} does not match the CRC32C sent with it",
                    upload.path.key, part.number
                )
            })?;
            f.write_all_at(&data, part.offset)
                .map_err(|e| StoreError::io(&upload.path.key, e))?;
            Ok(PartReceipt {
                number: part.number,
                etag: format!("\"{crc:08x}\""),
                len: data.len() as u64,
                crc32c: Some(crc32c_b64(crc)),
            })
        })
        .await
    }

    async fn upload_part_stream(
        &self,
        upload: &UploadRef,
        part: &PartSpec,
        mut chunks: crate::ByteChunks,
    ) -> Result<PartReceipt> {
        use futures::StreamExt;
        const BATCH: usize = 1024 * 1024;
        let tmp = tmp_path(Path::new(&upload.path.key), &upload.upload_id);
        let up = upload.clone();
        // Whole blocks go to disk around the page cache where the part starts on a block
        // boundary and the file system allows it (see `direct`).
        let want_direct = part.offset.is_multiple_of(direct::ALIGN as u64);
        let files = blocking(move || {
            let f = open_upload(&tmp, &up)?;
            let d = if want_direct {
                direct::open(&tmp)
            } else {
                None
            };
            Ok((f, d))
        })
        .await?;
        let files = Arc::new(files);
        // Chunks arrive small: gather about a megabyte (cache-hot), then write it at its offset.
        let mut crc = 0u32;
        let mut offset = part.offset;
        let mut written = 0u64;
        let mut cached = false;
        let mut buf = direct::AlignedBuf::new(BATCH);
        let key = upload.path.key.as_str();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            crc = crate::checksum::crc32c_append(crc, &chunk);
            written += chunk.len() as u64;
            // A chunk that is already aligned (a source that reads into aligned windows, as S3
            // on plain HTTP does) goes to disk as it is, with nothing gathered before it.
            if buf.is_empty()
                && files.1.is_some()
                && (chunk.as_ptr() as usize).is_multiple_of(direct::ALIGN)
                && direct::aligned(offset, chunk.len())
            {
                let n = chunk.len() as u64;
                let (_, went_direct) = write_on_pool(&files, key, chunk, offset).await?;
                cached |= !went_direct;
                offset += n;
                continue;
            }
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let n = buf.fill(rest);
                rest = &rest[n..];
                if buf.is_full() {
                    let n = buf.as_slice().len() as u64;
                    let (b, went_direct) = write_on_pool(&files, key, buf, offset).await?;
                    buf = b;
                    buf.clear();
                    cached |= !went_direct;
                    offset += n;
                }
            }
        }
        if !buf.is_empty() {
            let (_, went_direct) = write_on_pool(&files, key, buf, offset).await?;
            cached |= !went_direct;
        }
        if cached {
            // Start writing what went through the page cache now, without waiting: the fsync at
            // completion then finds little left to do, instead of the whole file.
            let (f, start, len) = (files.clone(), part.offset, written);
            blocking(move || {
                start_writeback(&f.0, start, len);
                Ok(())
            })
            .await?;
        }
        if written != part.len {
            return Err(StoreError::Transient {
                store: "local".into(),
                op: "write part".into(),
                detail: format!(
                    "{}: part {} got {written} of {} bytes",
                    upload.path.key, part.number, part.len
                ),
            });
        }
        Ok(PartReceipt {
            number: part.number,
            etag: format!("\"{crc:08x}\""),
            len: written,
            crc32c: Some(crc32c_b64(crc)),
        })
    }

    async fn complete_upload(
        &self,
        upload: &UploadRef,
        parts: &[PartReceipt],
    ) -> Result<PutReceipt> {
        let dest = PathBuf::from(&upload.path.key);
        let tmp = tmp_path(&dest, &upload.upload_id);
        let expected: u64 = parts.iter().map(|p| p.len).sum();
        let upload = upload.clone();
        blocking(move || {
            let key = &upload.path.key;
            let f = open_upload(&tmp, &upload)?;
            f.set_len(expected).map_err(|e| StoreError::io(key, e))?;
            f.sync_all().map_err(|e| StoreError::io(key, e))?;
            fs::rename(&tmp, &dest).map_err(|e| StoreError::io(key, e))?;
            Ok(PutReceipt::default())
        })
        .await
    }

    async fn abort_upload(&self, upload: &UploadRef) -> Result<()> {
        let tmp = tmp_path(Path::new(&upload.path.key), &upload.upload_id);
        let key = upload.path.key.clone();
        blocking(move || match fs::remove_file(&tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&key, e)),
        })
        .await
    }

    async fn list_parts(&self, upload: &UploadRef) -> Result<Vec<PartReceipt>> {
        // A file keeps no record of which ranges were written: the journal's receipts are the
        // record. Report the upload as present (or not) and no parts.
        let tmp = tmp_path(Path::new(&upload.path.key), &upload.upload_id);
        if tmp.exists() {
            Ok(Vec::new())
        } else {
            Err(StoreError::NoSuchUpload {
                store: "local".into(),
                path: upload.path.key.clone(),
                upload_id: upload.upload_id.clone(),
            })
        }
    }

    async fn check_parts(
        &self,
        upload: &UploadRef,
        parts: &[(PartSpec, PartReceipt)],
    ) -> Result<Vec<u32>> {
        let tmp = tmp_path(Path::new(&upload.path.key), &upload.upload_id);
        let parts = parts.to_vec();
        let upload = upload.clone();
        blocking(move || {
            let f = File::open(&tmp).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => StoreError::NoSuchUpload {
                    store: "local".into(),
                    path: upload.path.key.clone(),
                    upload_id: upload.upload_id.clone(),
                },
                _ => StoreError::io(&upload.path.key, e),
            })?;
            let mut good = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            'parts: for (spec, receipt) in parts {
                let Some(want) = receipt.crc32c.as_deref() else {
                    continue;
                };
                if receipt.len != spec.len {
                    continue;
                }
                let mut crc = 0;
                let mut done = 0u64;
                while done < spec.len {
                    let n = (spec.len - done).min(buf.len() as u64) as usize;
                    if f.read_exact_at(&mut buf[..n], spec.offset + done).is_err() {
                        continue 'parts;
                    }
                    crc = crate::checksum::crc32c_append(crc, &buf[..n]);
                    done += n as u64;
                }
                if crate::checksum::same_checksum(want, &crc32c_b64(crc)) {
                    good.push(spec.number);
                }
            }
            Ok(good)
        })
        .await
    }

    async fn list_uploads(&self, _bucket: &str, prefix: &str) -> Result<Vec<PendingUpload>> {
        let prefix = prefix.to_string();
        blocking(move || {
            let p = Path::new(&prefix);
            let dir = if p.is_dir() {
                p.to_path_buf()
            } else {
                p.parent().map(Path::to_path_buf).unwrap_or_default()
            };
            let mut out = Vec::new();
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                let Ok(rd) = fs::read_dir(&d) else { continue };
                for entry in rd.flatten() {
                    let path = entry.path();
                    let Ok(ft) = entry.file_type() else { continue };
                    if ft.is_dir() {
                        stack.push(path);
                    } else if let Some((dest, id)) = parse_tmp(&path) {
                        let dest_s = dest.to_string_lossy().into_owned();
                        if !dest_s.starts_with(&prefix) {
                            continue;
                        }
                        out.push(PendingUpload {
                            upload: UploadRef {
                                path: ObjectPath::new("", dest_s),
                                upload_id: id,
                            },
                            initiated: entry
                                .metadata()
                                .ok()
                                .and_then(|m| m.modified().ok())
                                .or(Some(SystemTime::now())),
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete(&self, path: &ObjectPath, _version_id: Option<&str>) -> Result<()> {
        let key = path.key.clone();
        blocking(move || fs::remove_file(&key).map_err(|e| io_err(&key, e))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Bytes written around the page cache, so a test can tell the direct path was taken.
    pub(super) static DIRECT_BYTES: AtomicU64 = AtomicU64::new(0);
    /// Bytes read around the page cache.
    pub(super) static DIRECT_READ_BYTES: AtomicU64 = AtomicU64::new(0);

    /// A source file that is not in the page cache is read around it, wherever the platform and
    /// file system allow: ranges at aligned and odd offsets, into fresh (aligned) and pooled
    /// (unaligned) buffers, and the file's short tail all come back byte for byte with their
    /// CRC32C, and reading them leaves the file out of the page cache.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn uncached_sources_are_read_exactly_around_the_page_cache() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("barge-cold-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("cold.bin");
        let total = 3 * (1 << 20) + 123;
        let body: Vec<u8> = (0..total).map(|i| (i * 13 % 241) as u8).collect();
        fs::write(&file, &body).expect("source");
        let f = File::open(&file).expect("open");
        f.sync_all().expect("sync");
        // SAFETY: advice on an open descriptor; it only drops the file's clean cached pages.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0, "posix_fadvise");
        let direct_ok =
            direct::mostly_uncached(&f, 0, total as u64) && direct::open_read(&file, &f).is_some();
        let store = LocalStore::new();
        let path = ObjectPath::new("", file.display().to_string());
        let pin = Pin::of(&store.head(&path).await.expect("head"));
        let before = DIRECT_READ_BYTES.load(Ordering::Relaxed);
        let mut pooled = bytes::BytesMut::with_capacity(4_000_000);
        pooled.resize(3_500_000, 0xAA);
        for (offset, len, buf) in [
            (0u64, total as u64, bytes::BytesMut::new()),
            (1 << 20, 1 << 20, bytes::BytesMut::new()),
            (4096 + 5, (1 << 20) + 9, bytes::BytesMut::new()),
            (0, 2 << 20, pooled),
            (total as u64 - 10, 10, bytes::BytesMut::new()),
        ] {
            let (got, crc) = store
                .get_range_into(&path, &pin, offset, len, buf)
                .await
                .expect("range");
            let want = &body[offset as usize..(offset + len) as usize];
            assert!(got == want, "range {offset}+{len} byte for byte");
            assert_eq!(
                crc,
                crate::checksum::crc32c(want),
                "CRC32C of {offset}+{len}"
            );
        }
        let read_direct = DIRECT_READ_BYTES.load(Ordering::Relaxed) - before;
        let still_uncached = direct::mostly_uncached(&f, 0, total as u64);
        fs::remove_dir_all(&dir).ok();
        if direct_ok {
            assert!(
                read_direct >= total as u64,
                "the whole file went around the page cache at least once ({read_direct} bytes)"
            );
            assert!(still_uncached, "reading it did not fill the page cache");
        }
    }

    /// A range read into a pooled buffer (larger, holding an earlier part's bytes) returns
    /// exactly the file's bytes; a range past the end of the file is a changed source.
    #[tokio::test]
    async fn ranges_read_into_reused_buffers_are_exact() {
        let dir = std::env::temp_dir().join(format!("barge-ranges-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("src.bin");
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        fs::write(&file, &body).expect("source");
        let store = LocalStore::new();
        let path = ObjectPath::new("", file.display().to_string());
        let pin = Pin::of(&store.head(&path).await.expect("head"));
        // Whole (three read windows), window-sized, tiny, and crossing a window boundary.
        for (offset, len) in [
            (0u64, 3_000_000u64),
            (4096, 1 << 20),
            (2_999_990, 10),
            (5, 1),
            ((1 << 20) - 3, 7),
        ] {
            let mut pooled = bytes::BytesMut::with_capacity(4_000_000);
            pooled.resize(3_500_000, 0xAA);
            let (got, crc) = store
                .get_range_into(&path, &pin, offset, len, pooled)
                .await
                .expect("range");
            let want = &body[offset as usize..(offset + len) as usize];
            assert_eq!(&got[..], want);
            assert_eq!(
                crc,
                crate::checksum::crc32c(want),
                "the CRC32C of the range"
            );
        }
        let past = store
            .get_range_into(&path, &pin, 2_999_000, 2_000, bytes::BytesMut::new())
            .await;
        assert!(
            matches!(past, Err(StoreError::SourceChanged { .. })),
            "{past:?}"
        );
        fs::remove_dir_all(&dir).ok();
    }

    /// Parts streamed in small chunks land byte for byte, whether they start on a block boundary
    /// (written directly, where the file system allows) or not (through the page cache), with
    /// an unaligned tail at the end of the file.
    #[tokio::test]
    async fn streamed_parts_land_exactly_direct_or_not() {
        let dir = std::env::temp_dir().join(format!("barge-direct-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        fs::write(dir.join("probe"), b"").expect("probe");
        let direct_ok = direct::open(&dir.join("probe")).is_some();
        let store = LocalStore::new();
        let mib = 1024 * 1024;
        // Part 1 starts on a block boundary and ends 5 bytes past one; part 2 starts there
        // (unaligned) and ends on a boundary; part 3 starts on it and ends with a short tail.
        let layout = [
            (1u32, 0u64, 5 * mib / 2 + 5),
            (2, 5 * mib / 2 + 5, mib - 5),
            (3, 7 * mib / 2, mib + 4093),
        ];
        let total = 9 * mib / 2 + 4093;
        let body: Bytes = (0..total)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let path = ObjectPath::new("", format!("{}/out.bin", dir.display()));
        let up = store
            .create_upload(&path, &ObjectAttrs::default(), ChecksumMode::Crc32c)
            .await
            .expect("create");
        let before = DIRECT_BYTES.load(Ordering::Relaxed);
        let mut receipts = Vec::new();
        for (number, offset, len) in layout {
            let spec = PartSpec {
                number,
                offset,
                len,
            };
            let chunk = body.slice(offset as usize..(offset + len) as usize);
            let r = store
                .upload_part_stream(&up, &spec, crate::conformance::in_pieces(&chunk, 7000))
                .await
                .expect("part");
            assert_eq!(r.len, len);
            receipts.push(r);
        }
        store
            .complete_upload(&up, &receipts)
            .await
            .expect("complete");
        let got = fs::read(dir.join("out.bin")).expect("read back");
        let direct_bytes = DIRECT_BYTES.load(Ordering::Relaxed) - before;
        fs::remove_dir_all(&dir).ok();
        assert!(
            got == body[..],
            "the file is the parts in order, byte for byte"
        );
        if direct_ok {
            // Part 1's and part 3's whole megabytes; nothing of part 2 (unaligned start).
            assert_eq!(
                direct_bytes,
                3 * mib,
                "aligned batches went straight to disk"
            );
        }
    }

    #[test]
    fn tmp_names_round_trip() {
        let dest = Path::new("/data/out/file.bin");
        let id = "abc123abc123abc123abc123abc123ab";
        let tmp = tmp_path(dest, id);
        assert_eq!(
            tmp,
            Path::new("/data/out/.file.bin.abc123abc123abc123abc123abc123ab.barge-tmp")
        );
        assert_eq!(parse_tmp(&tmp), Some((dest.to_path_buf(), id.into())));
        assert_eq!(parse_tmp(Path::new("/data/out/file.bin")), None);
        // A user's own file that only ends like a temporary one is not barge's.
        assert_eq!(parse_tmp(Path::new("/data/out/notes.barge-tmp")), None);
        assert_eq!(parse_tmp(Path::new("/data/out/.a.b.barge-tmp")), None);
        // Names up to 255 bytes keep a temporary name within 255 bytes, and cleanup's reading
        // of it gives back the same temporary name.
        let id = "0123456789abcdef0123456789abcdef";
        for len in [1, 200, 211, 212, 254, 255] {
            for ch in ["a", "é"] {
                let name: String = ch.repeat(len / ch.len());
                let dest = Path::new("/data/out").join(&name);
                let tmp = tmp_path(&dest, id);
                let tmp_name = tmp.file_name().expect("name").len();
                assert!(tmp_name <= 255, "{len}: {tmp_name}");
                let (back, back_id) = parse_tmp(&tmp).expect("parses");
                assert_eq!(back_id, id);
                assert_eq!(tmp_path(&back, id), tmp, "{len}");
            }
        }
    }
}
