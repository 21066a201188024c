//! Planning: for each file, stat the source, then choose a strategy and a part size.
//!
//! Pure functions over plain data, so every rule here is unit-tested without a store.

use barge_store::{Capabilities, ObjectAttrs, PartSpec, Pin};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::location::Location;
use crate::size::human;

/// How one file is moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Read the whole (small or empty) object and write it with one PUT.
    SinglePut,
    /// One server-side CopyObject: no bytes through barge.
    ServerCopy,
    /// Multipart upload whose parts are copied server-side (UploadPartCopy with a byte range).
    ServerPartCopy,
    /// Multipart upload whose parts are read (ranged GET) and uploaded by barge.
    StreamParts,
}

impl Strategy {
    pub fn is_multipart(self) -> bool {
        matches!(self, Strategy::ServerPartCopy | Strategy::StreamParts)
    }
    pub fn is_server_side(self) -> bool {
        matches!(self, Strategy::ServerCopy | Strategy::ServerPartCopy)
    }
}

/// Knobs that shape every plan.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// The smallest part size to use: raised per file when the part cap requires.
    pub part_size: u64,
    /// The smallest part size for server-side copies (no memory cost, fewer requests).
    pub copy_part_size: u64,
    /// The budget for buffered part data.
    pub max_memory: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            part_size: 16 * barge_store::MIB,
            copy_part_size: 256 * barge_store::MIB,
            max_memory: 512 * barge_store::MIB,
        }
    }
}

/// What a file's transfer will do: plain data, printed by `--dry-run`, journaled later.
#[derive(Clone, Debug)]
pub struct FilePlan {
    pub id: usize,
    pub src: Location,
    pub dst: Location,
    pub size: u64,
    pub pin: Pin,
    pub attrs: ObjectAttrs,
    pub strategy: Strategy,
    pub part_size: u64,
    pub part_count: u32,
    /// Planned from a listing without a stat: the attributes arrive with the object's one GET.
    pub attrs_pending: bool,
}

impl FilePlan {
    /// The parts of a multipart plan.
    pub fn parts(&self) -> Vec<PartSpec> {
        split(self.size, self.part_size)
    }
}

pub fn split(size: u64, part_size: u64) -> Vec<PartSpec> {
    let ps = part_size.max(1);
    let mut out = Vec::with_capacity(size.div_ceil(ps) as usize);
    let mut offset = 0;
    let mut number = 1;
    while offset < size {
        let len = ps.min(size - offset);
        out.push(PartSpec {
            number,
            offset,
            len,
        });
        offset += len;
        number += 1;
    }
    out
}

const ROUND: u64 = barge_store::MIB;

/// The part size for an object of `size` bytes: at least `floor`, at least what fits the store's
/// part count cap, within the store's part size limits. Refuses what no part size can fit.
pub fn part_size_for(size: u64, floor: u64, caps: &Capabilities) -> Result<u64> {
    if let Some(max) = caps.max_object_size
        && size > max
    {
        return Err(EngineError::Input(format!(
            "{} ({size} bytes) is larger than the destination accepts ({})",
            human(size),
            human(max)
        )));
    }
    let needed = size.div_ceil(u64::from(caps.max_parts.max(1)));
    let mut ps = floor.max(needed).max(caps.min_part_size).max(1);
    if ps % ROUND != 0 && ps > ROUND {
        ps = ps.div_ceil(ROUND).saturating_mul(ROUND);
    }
    if ps > caps.max_part_size {
        // Rounding may have pushed past the cap where the exact size still fits.
        let exact = floor.max(needed).max(caps.min_part_size);
        if exact <= caps.max_part_size {
            return Ok(exact);
        }
        return Err(EngineError::Input(format!(
            "{} ({size} bytes) cannot be uploaded in at most {} parts of at most {} each: no part size fits this store's limits",
            human(size),
            caps.max_parts,
            human(caps.max_part_size)
        )));
    }
    Ok(ps)
}

/// Everything the planner needs to know about the two ends.
pub struct Ends<'a> {
    pub src_caps: &'a Capabilities,
    pub dst_caps: &'a Capabilities,
    /// Both sides are the same service with the same credentials and can copy server-side.
    pub same_service: bool,
}

/// Choose strategy and part size for one file.
pub fn choose(size: u64, ends: &Ends<'_>, opts: &PlanOptions) -> Result<(Strategy, u64, u32)> {
    let caps = ends.dst_caps;
    let server = ends.same_service && ends.src_caps.server_side_copy && caps.server_side_copy;
    // A store that copies no ranges (GCS's rewrite) copies a whole object of any size in one
    // call; past its limit the bytes move through barge.
    if server && !caps.copies_parts && size <= caps.max_single_copy {
        return Ok((Strategy::ServerCopy, size.max(1), 1));
    }
    if server && caps.copies_parts {
        let ps = part_size_for(size, opts.copy_part_size.max(opts.part_size), caps)?;
        if size <= ps.min(caps.max_single_copy) {
            return Ok((Strategy::ServerCopy, size.max(1), 1));
        }
        let n = size.div_ceil(ps) as u32;
        return Ok((Strategy::ServerPartCopy, ps, n));
    }
    let ps = part_size_for(size, opts.part_size, caps)?;
    if ps > opts.max_memory {
        return Err(EngineError::Input(format!(
            "this file needs parts of {} but --max-memory is {}: raise --max-memory to at least {}",
            human(ps),
            human(opts.max_memory),
            human(ps)
        )));
    }
    if size <= ps.min(caps.max_single_put) {
        return Ok((Strategy::SinglePut, size.max(1), 1));
    }
    Ok((Strategy::StreamParts, ps, size.div_ceil(ps) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use barge_store::{GIB, MIB, TIB};

    fn s3() -> Capabilities {
        Capabilities::s3()
    }

    #[test]
    fn big_files_fit_the_part_cap() {
        for size in [100 * GIB, 10 * TIB, 5 * TIB + 1, 48 * TIB] {
            let ps = part_size_for(size, 5 * MIB, &s3()).expect("fits");
            let parts = size.div_ceil(ps);
            assert!(parts <= 10_000, "{size}: {parts} parts");
            assert!((5 * MIB..=5 * GIB).contains(&ps), "{size}: part size {ps}");
        }
        // 100 GiB at a 5 MiB floor would be 20,480 parts: the planner raises the part size.
        let ps = part_size_for(100 * GIB, 5 * MIB, &s3()).expect("fits");
        assert!(ps > 5 * MIB);
        assert_eq!(split(100 * GIB, ps).len() as u64, (100 * GIB).div_ceil(ps));
    }

    #[test]
    fn what_no_part_size_fits_is_refused() {
        let too_big = 10_000 * 5 * GIB + 1;
        let e = part_size_for(too_big, 5 * MIB, &s3()).expect_err("too big");
        assert!(e.to_string().contains("no part size fits"), "{e}");
        let mut caps = s3();
        caps.max_object_size = Some(5 * TIB);
        let e = part_size_for(6 * TIB, 5 * MIB, &caps).expect_err("over object limit");
        assert!(
            e.to_string()
                .contains("larger than the destination accepts"),
            "{e}"
        );
    }

    #[test]
    fn split_covers_every_byte_once() {
        for (size, ps) in [(0, 5), (1, 5), (5, 5), (6, 5), (17, 5)] {
            let parts = split(size, ps);
            let total: u64 = parts.iter().map(|p| p.len).sum();
            assert_eq!(total, size);
            for (i, p) in parts.iter().enumerate() {
                assert_eq!(p.number as usize, i + 1);
                assert_eq!(p.offset, i as u64 * ps);
            }
        }
        assert!(split(0, 5).is_empty());
    }

    #[test]
    fn strategies() {
        let caps = s3();
        let streamed = Ends {
            src_caps: &caps,
            dst_caps: &caps,
            same_service: false,
        };
        let server = Ends {
            same_service: true,
            ..streamed
        };
        let o = PlanOptions::default();
        assert_eq!(
            choose(0, &streamed, &o).expect("empty").0,
            Strategy::SinglePut
        );
        assert_eq!(
            choose(MIB, &streamed, &o).expect("small").0,
            Strategy::SinglePut
        );
        let (s, ps, n) = choose(GIB, &streamed, &o).expect("big");
        assert_eq!((s, ps, n), (Strategy::StreamParts, 16 * MIB, 64));
        assert_eq!(
            choose(MIB, &server, &o).expect("small").0,
            Strategy::ServerCopy
        );
        assert_eq!(
            choose(6 * GIB, &server, &o).expect("big").0,
            Strategy::ServerPartCopy
        );
        // Over 5 GiB never goes as one CopyObject even with huge copy parts.
        let huge = PlanOptions {
            copy_part_size: 5 * GIB,
            ..o.clone()
        };
        assert_eq!(
            choose(5 * GIB + 1, &server, &huge).expect("big").0,
            Strategy::ServerPartCopy
        );
        let tight = PlanOptions {
            max_memory: 8 * MIB,
            ..o
        };
        let e = choose(GIB, &streamed, &tight).expect_err("memory");
        assert!(e.to_string().contains("raise --max-memory"), "{e}");
    }
}
