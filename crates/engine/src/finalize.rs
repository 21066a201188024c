//! Finalize: complete the upload from the journaled receipts, verify the object, and only then
//! delete the exact source key.

use barge_store::checksum::{composite_crc32c, crc32c_b64, crc32c_from_b64, same_checksum};
use barge_store::{PartReceipt, Store};

use crate::error::{EngineError, Result};
use crate::plan::FilePlan;
use crate::report::Verification;

/// What the finished object must look like.
pub struct Expected {
    pub size: u64,
    /// The CRC32C the store should report: `b64` (full object) or `b64-N` (composite).
    pub crc32c: Option<String>,
}

impl Expected {
    pub fn from_parts(size: u64, receipts: &[PartReceipt]) -> Self {
        let crcs: Option<Vec<u32>> = receipts
            .iter()
            .map(|r| r.crc32c.as_deref().and_then(crc32c_from_b64))
            .collect();
        Self {
            size,
            crc32c: crcs.filter(|c| !c.is_empty()).map(|c| composite_crc32c(&c)),
        }
    }

    pub fn whole(size: u64, crc: Option<u32>) -> Self {
        Self {
            size,
            crc32c: crc.map(crc32c_b64),
        }
    }
}

/// Check the destination object against what barge sent.
pub async fn verify(dst: &dyn Store, plan: &FilePlan, exp: &Expected) -> Result<Verification> {
    let meta = dst.head(&plan.dst.path).await?;
    if meta.size != exp.size {
        return Err(EngineError::Verify {
            dest: plan.dst.to_string(),
            msg: format!("size is {} bytes, expected {}", meta.size, exp.size),
        });
    }
    match (&meta.crc32c, &exp.crc32c) {
        (Some(reported), Some(expected)) => {
            // A store reports a composite as b64-N, a full-object checksum as b64: compare only
            // like with like.
            let reported_composite = reported.contains('-');
            let expected_composite = expected.contains('-');
            if reported_composite != expected_composite {
                return Ok(Verification::SizeOnly);
            }
            if same_checksum(reported, expected) {
                Ok(Verification::SizeAndCrc32c)
            } else {
                Err(EngineError::Verify {
                    dest: plan.dst.to_string(),
                    msg: format!("store reports CRC32C {reported}, barge sent {expected}"),
                })
            }
        }
        _ => Ok(Verification::SizeOnly),
    }
}
