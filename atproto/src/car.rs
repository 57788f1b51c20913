//! CAR v1 files (through `iroh-car`): a header naming root CIDs, then CID-addressed blocks.
//!
//! Reading checks what `iroh-car` leaves to the caller: every block hashes to its CID, and the
//! input stays inside the caller's size and count bounds. Firehose `blocks` are decoded from
//! memory, so the async reader is driven to completion in place without a runtime.

use std::collections::HashMap;

use cid::Cid;
use iroh_car::{CarHeader, CarReader, CarWriter};
use thiserror::Error;

use crate::data::cid_matches;

/// Why a CAR file was refused.
#[derive(Debug, Error)]
pub enum CarError {
    /// The input is larger than the caller allows.
    #[error("CAR is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The caller's limit.
        limit: usize,
    },
    /// More blocks than the caller allows.
    #[error("CAR has more than {0} blocks")]
    TooManyBlocks(usize),
    /// A block's bytes do not hash to its CID.
    #[error("block {0} does not match its CID")]
    BadBlock(Cid),
    /// The bytes are not a well-formed CAR v1.
    #[error("malformed CAR: {0}")]
    Malformed(String),
}

/// Bounds on a CAR read from the network.
#[derive(Debug, Clone, Copy)]
pub struct CarLimits {
    /// Largest accepted input, in bytes.
    pub max_bytes: usize,
    /// Most blocks accepted.
    pub max_blocks: usize,
}

impl CarLimits {
    /// The firehose's bounds: `blocks` of at most 2,000,000 bytes.
    pub const FIREHOSE: CarLimits = CarLimits {
        max_bytes: 2_000_000,
        max_blocks: 10_000,
    };
    /// Bounds for a whole repository export (`getRepo`).
    pub const REPO: CarLimits = CarLimits {
        max_bytes: 512 * 1024 * 1024,
        max_blocks: 4_000_000,
    };
}

/// Blocks by CID, as read from a CAR or gathered for one.
pub type BlockMap = HashMap<Cid, Vec<u8>>;

/// A decoded CAR: its roots and its blocks.
#[derive(Debug, Default, Clone)]
pub struct Car {
    /// The header's root CIDs (a repo CAR has one: the signed commit).
    pub roots: Vec<Cid>,
    /// Every block, verified against its CID.
    pub blocks: BlockMap,
}

/// Reads a CAR v1 from memory, verifying every block against its CID.
pub fn read_car(bytes: &[u8], limits: CarLimits) -> Result<Car, CarError> {
    if bytes.len() > limits.max_bytes {
        return Err(CarError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    futures::executor::block_on(async {
        let mut reader = CarReader::new(bytes)
            .await
            .map_err(|e| CarError::Malformed(e.to_string()))?;
        let roots = reader.header().roots().to_vec();
        let mut blocks = BlockMap::new();
        while let Some((cid, data)) = reader
            .next_block()
            .await
            .map_err(|e| CarError::Malformed(e.to_string()))?
        {
            if blocks.len() >= limits.max_blocks {
                return Err(CarError::TooManyBlocks(limits.max_blocks));
            }
            if !cid_matches(&cid, &data) {
                return Err(CarError::BadBlock(cid));
            }
            blocks.insert(cid, data);
        }
        Ok(Car { roots, blocks })
    })
}

/// Writes a CAR v1 with the given roots and blocks, in the order given.
pub fn write_car<'a>(
    roots: &[Cid],
    blocks: impl IntoIterator<Item = (&'a Cid, &'a [u8])>,
) -> Result<Vec<u8>, CarError> {
    futures::executor::block_on(async {
        let mut writer = CarWriter::new(CarHeader::new_v1(roots.to_vec()), Vec::new());
        writer
            .write_header()
            .await
            .map_err(|e| CarError::Malformed(e.to_string()))?;
        for (cid, data) in blocks {
            writer
                .write(*cid, data)
                .await
                .map_err(|e| CarError::Malformed(e.to_string()))?;
        }
        writer
            .finish()
            .await
            .map_err(|e| CarError::Malformed(e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::encode_block;

    #[test]
    fn round_trip_and_tamper() {
        let (a, a_bytes) = encode_block(&"alpha").expect("encode");
        let (b, b_bytes) = encode_block(&42u32).expect("encode");
        let car =
            write_car(&[a], [(&a, a_bytes.as_slice()), (&b, b_bytes.as_slice())]).expect("write");
        let read = read_car(&car, CarLimits::FIREHOSE).expect("read");
        assert_eq!(read.roots, vec![a]);
        assert_eq!(read.blocks.get(&b), Some(&b_bytes));

        let mut tampered = car.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            read_car(&tampered, CarLimits::FIREHOSE),
            Err(CarError::BadBlock(_))
        ));
        assert!(read_car(&car[..car.len() - 2], CarLimits::FIREHOSE).is_err());
        let tight = CarLimits {
            max_bytes: car.len(),
            max_blocks: 1,
        };
        assert!(matches!(
            read_car(&car, tight),
            Err(CarError::TooManyBlocks(1))
        ));
        let tiny = CarLimits {
            max_bytes: 10,
            max_blocks: 10,
        };
        assert!(matches!(
            read_car(&car, tiny),
            Err(CarError::TooLarge { .. })
        ));
    }
}
