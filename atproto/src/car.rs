//! CAR v1 files (through `iroh-car`): a header naming root CIDs, then CID-addressed blocks.
//!
//! Writing goes through `iroh-car`. Reading is done here, in place: every firehose event
//! carries a CAR, and `iroh-car`'s async reader copies each block into its own buffer. The
//! reader takes the same format (`iroh-car`'s reader is the reference its tests compare
//! with), checks every block against its CID, and keeps the input inside the caller's size
//! and count bounds.

use std::collections::HashMap;

use cid::Cid;
use iroh_car::{CarHeader, CarWriter};
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

/// A CAR read in place: its roots and its blocks as slices of the input.
#[derive(Debug, Default, Clone)]
pub struct CarView<'a> {
    /// The header's root CIDs.
    pub roots: Vec<Cid>,
    /// Every block, verified against its CID, borrowed from the input.
    pub blocks: HashMap<Cid, &'a [u8]>,
}

/// Longest section accepted (the same bound `iroh-car` applies).
const MAX_SECTION: usize = 4 * 1024 * 1024;

/// An unsigned LEB128 varint in shortest form, and the bytes it took.
fn varint(bytes: &[u8]) -> Result<(usize, usize), CarError> {
    let bad = || CarError::Malformed("bad varint".into());
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f)
            .checked_shl(7 * i as u32)
            .ok_or_else(bad)?;
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(bad());
            }
            return Ok((usize::try_from(value).map_err(|_| bad())?, i + 1));
        }
    }
    Err(bad())
}

/// The header: `{roots: [CID…], version: 1}`.
fn car_header(bytes: &[u8]) -> Result<Vec<Cid>, CarError> {
    fn canonical(bytes: &[u8]) -> Result<(Vec<Cid>, u64), crate::cbor::NotCanonical> {
        let mut r = crate::cbor::Reader::new(bytes);
        if r.map()? != 2 {
            return Err(crate::cbor::NotCanonical);
        }
        r.key("roots")?;
        let n = r.array()?;
        let mut roots = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            roots.push(r.cid()?);
        }
        r.key("version")?;
        let version = r.uint()?;
        if !r.is_done() {
            return Err(crate::cbor::NotCanonical);
        }
        Ok((roots, version))
    }
    #[derive(serde::Deserialize)]
    struct Header {
        roots: Vec<Cid>,
        version: u64,
    }
    let (roots, version) = match canonical(bytes) {
        Ok(h) => h,
        Err(_) => {
            let h: Header = crate::data::from_cbor(bytes)
                .map_err(|e| CarError::Malformed(format!("header: {e}")))?;
            (h.roots, h.version)
        }
    };
    if version != 1 {
        return Err(CarError::Malformed(
            "only CAR version 1 is supported".into(),
        ));
    }
    if roots.is_empty() {
        return Err(CarError::Malformed("the header names no root".into()));
    }
    Ok(roots)
}

/// Reads a CAR v1 in place, verifying every block against its CID; nothing is copied.
pub fn read_car_view(bytes: &[u8], limits: CarLimits) -> Result<CarView<'_>, CarError> {
    if bytes.len() > limits.max_bytes {
        return Err(CarError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let section = |at: usize| -> Result<(&[u8], usize), CarError> {
        let (len, n) = varint(&bytes[at..])?;
        if len > MAX_SECTION {
            return Err(CarError::Malformed(format!("section of {len} bytes")));
        }
        let start = at + n;
        let body = bytes
            .get(start..start.saturating_add(len))
            .ok_or_else(|| CarError::Malformed("truncated section".into()))?;
        Ok((body, start + len))
    };
    let (header, mut at) = section(0)?;
    let roots = car_header(header)?;
    let mut blocks = HashMap::new();
    while at < bytes.len() {
        let (body, next) = section(at)?;
        at = next;
        let mut rest = body;
        let cid = Cid::read_bytes(&mut rest).map_err(|e| CarError::Malformed(e.to_string()))?;
        if blocks.len() >= limits.max_blocks {
            return Err(CarError::TooManyBlocks(limits.max_blocks));
        }
        if !cid_matches(&cid, rest) {
            return Err(CarError::BadBlock(cid));
        }
        blocks.insert(cid, rest);
    }
    Ok(CarView { roots, blocks })
}

/// Reads a CAR v1 from memory, verifying every block against its CID, into owned blocks.
pub fn read_car(bytes: &[u8], limits: CarLimits) -> Result<Car, CarError> {
    let view = read_car_view(bytes, limits)?;
    Ok(Car {
        roots: view.roots,
        blocks: view
            .blocks
            .into_iter()
            .map(|(cid, b)| (cid, b.to_vec()))
            .collect(),
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

    /// `iroh-car`'s reader, the reference the in-place reader is held to.
    fn reference(bytes: &[u8]) -> Option<Car> {
        futures::executor::block_on(async {
            let mut reader = iroh_car::CarReader::new(bytes).await.ok()?;
            let roots = reader.header().roots().to_vec();
            let mut blocks = BlockMap::new();
            while let Some((cid, data)) = reader.next_block().await.ok()? {
                if !cid_matches(&cid, &data) {
                    return None;
                }
                blocks.insert(cid, data);
            }
            Some(Car { roots, blocks })
        })
    }

    #[test]
    fn reads_what_iroh_car_reads() {
        use proptest::prelude::*;
        let mut cars = Vec::new();
        for n in [0usize, 1, 7, 40] {
            let blocks: Vec<(Cid, Vec<u8>)> = (0..n)
                .map(|i| encode_block(&format!("block {i} ").repeat(i % 50)).expect("encode"))
                .collect();
            let (root, _) = encode_block(&"root").expect("encode");
            let car =
                write_car(&[root], blocks.iter().map(|(c, b)| (c, b.as_slice()))).expect("write");
            let ours = read_car(&car, CarLimits::FIREHOSE).expect("read");
            let theirs = reference(&car).expect("reference");
            assert_eq!((ours.roots, ours.blocks), (theirs.roots, theirs.blocks));
            cars.push(car);
        }
        // Whatever the in-place reader takes, iroh-car takes the same way.
        proptest!(ProptestConfig { cases: 3000, ..ProptestConfig::default() },
            |(which in 0..cars.len(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>())| {
            let mut bytes = cars[which].clone();
            let at = at.index(bytes.len());
            if cut { bytes.truncate(at) } else { bytes[at] = byte }
            if let Ok(ours) = read_car(&bytes, CarLimits::FIREHOSE) {
                let theirs = reference(&bytes);
                prop_assert!(theirs.is_some(), "accepted only here");
                let theirs = theirs.expect("checked");
                prop_assert_eq!((ours.roots, ours.blocks), (theirs.roots, theirs.blocks));
            }
        });
    }

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
