//! The atproto data model: DAG-CBOR (through `serde_ipld_dagcbor`), CIDs, and the JSON form
//! with `{"$link": …}` for CIDs and `{"$bytes": …}` for byte strings.

use std::collections::BTreeMap;

use base64::Engine;
use cid::Cid;
use ipld_core::ipld::Ipld;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use ipld_core::ipld::Ipld as Value;

/// Multicodec code of DAG-CBOR.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code of raw bytes (blobs).
pub const RAW: u64 = 0x55;
/// Multihash code of SHA2-256.
pub const SHA2_256: u64 = 0x12;

/// Why a value is not valid atproto data.
#[derive(Debug, Error)]
pub enum DataError {
    /// DAG-CBOR could not be encoded.
    #[error("DAG-CBOR encode: {0}")]
    Encode(String),
    /// DAG-CBOR could not be decoded.
    #[error("DAG-CBOR decode: {0}")]
    Decode(String),
    /// The JSON form breaks a data-model rule.
    #[error("invalid data: {0}")]
    Invalid(&'static str),
}

/// Encodes a value as DAG-CBOR (map keys in canonical order).
pub fn to_cbor<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, DataError> {
    serde_ipld_dagcbor::to_vec(value).map_err(|e| DataError::Encode(e.to_string()))
}

/// Decodes one DAG-CBOR value that fills the whole slice.
pub fn from_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DataError> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| DataError::Decode(e.to_string()))
}

/// The CIDv1 (DAG-CBOR, SHA2-256) of already encoded bytes.
pub fn cid_for_cbor(bytes: &[u8]) -> Cid {
    cid_for(DAG_CBOR, bytes)
}

/// The CIDv1 with the given codec over SHA2-256 of `bytes`.
pub fn cid_for(codec: u64, bytes: &[u8]) -> Cid {
    cid_for_digest(codec, &Sha256::digest(bytes).into())
}

/// The CIDv1 with the given codec for an already computed SHA2-256 digest.
pub fn cid_for_digest(codec: u64, digest: &[u8; 32]) -> Cid {
    let mh = cid::multihash::Multihash::<64>::wrap(SHA2_256, digest)
        .expect("a 32-byte digest fits a 64-byte multihash");
    Cid::new_v1(codec, mh)
}

/// True when `bytes` hash to `cid` (SHA2-256 only: atproto uses nothing else).
pub fn cid_matches(cid: &Cid, bytes: &[u8]) -> bool {
    let mh = cid.hash();
    mh.code() == SHA2_256 && mh.digest() == &Sha256::digest(bytes)[..]
}

/// Encodes a value and returns its bytes and CID together.
pub fn encode_block<T: Serialize + ?Sized>(value: &T) -> Result<(Cid, Vec<u8>), DataError> {
    let bytes = to_cbor(value)?;
    Ok((cid_for_cbor(&bytes), bytes))
}

/// Converts the JSON form of atproto data into the data model, enforcing its rules:
/// integers only (an integral float such as `123.0` is taken as an integer), `$link` and
/// `$bytes` objects with no other keys, and a well-formed `$type` and blob wherever they
/// appear.
pub fn json_to_ipld(json: &serde_json::Value) -> Result<Ipld, DataError> {
    use serde_json::Value as J;
    Ok(match json {
        J::Null => Ipld::Null,
        J::Bool(b) => Ipld::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ipld::Integer(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ipld::Integer(i128::from(u))
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                        Ipld::Integer(f as i128)
                    }
                    _ => return Err(DataError::Invalid("floats are not allowed")),
                }
            }
        }
        J::String(s) => Ipld::String(s.clone()),
        J::Array(items) => Ipld::List(items.iter().map(json_to_ipld).collect::<Result<_, _>>()?),
        J::Object(map) => {
            if let Some(link) = map.get("$link") {
                let J::String(s) = link else {
                    return Err(DataError::Invalid("$link must be a string"));
                };
                if map.len() != 1 {
                    return Err(DataError::Invalid("$link object has other keys"));
                }
                let cid = Cid::try_from(s.as_str())
                    .map_err(|_| DataError::Invalid("$link is not a CID"))?;
                return Ok(Ipld::Link(cid));
            }
            if let Some(bytes) = map.get("$bytes") {
                let J::String(s) = bytes else {
                    return Err(DataError::Invalid("$bytes must be a string"));
                };
                if map.len() != 1 {
                    return Err(DataError::Invalid("$bytes object has other keys"));
                }
                return Ok(Ipld::Bytes(decode_base64(s)?));
            }
            let mut out = BTreeMap::new();
            for (k, v) in map {
                out.insert(k.clone(), json_to_ipld(v)?);
            }
            let out = Ipld::Map(out);
            check_typed_object(&out)?;
            out
        }
    })
}

/// Rules on objects that carry a `$type`: a non-empty string, and blobs complete.
fn check_typed_object(value: &Ipld) -> Result<(), DataError> {
    let Ipld::Map(map) = value else { return Ok(()) };
    match map.get("$type") {
        None => Ok(()),
        Some(Ipld::String(t)) if t.is_empty() => Err(DataError::Invalid("$type is empty")),
        Some(Ipld::String(t)) if t == "blob" => {
            match (map.get("ref"), map.get("mimeType"), map.get("size")) {
                (Some(Ipld::Link(_)), Some(Ipld::String(_)), Some(Ipld::Integer(_))) => Ok(()),
                _ => Err(DataError::Invalid(
                    "blob needs ref (link), mimeType and size (integer)",
                )),
            }
        }
        Some(Ipld::String(_)) => Ok(()),
        Some(_) => Err(DataError::Invalid("$type must be a string")),
    }
}

/// Base64 as atproto writes it: standard alphabet, padding optional, trailing bits lenient.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, DataError> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    engine
        .decode(s)
        .map_err(|_| DataError::Invalid("$bytes is not base64"))
}

/// Converts data-model values back to their JSON form (`$link`, unpadded `$bytes`).
pub fn ipld_to_json(value: &Ipld) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Ipld::Null => J::Null,
        Ipld::Bool(b) => J::Bool(*b),
        Ipld::Integer(i) => match i64::try_from(*i) {
            Ok(v) => J::from(v),
            Err(_) => J::String(i.to_string()),
        },
        Ipld::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        Ipld::String(s) => J::String(s.clone()),
        Ipld::Bytes(b) => serde_json::json!({
            "$bytes": base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)
        }),
        Ipld::List(items) => J::Array(items.iter().map(ipld_to_json).collect()),
        Ipld::Map(map) => J::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), ipld_to_json(v)))
                .collect(),
        ),
        Ipld::Link(cid) => serde_json::json!({ "$link": cid.to_string() }),
    }
}

/// Data-model values written as their JSON form (the same as [`ipld_to_json`]) straight to
/// a serializer, with no intermediate JSON tree: map keys in the data model's order
/// (bytewise, as DAG-CBOR maps are read back), CIDs as `{"$link"}`, bytes as unpadded
/// `{"$bytes"}`.
pub struct JsonView<'a>(pub &'a Ipld);

impl serde::Serialize for JsonView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Ipld::Null => s.serialize_unit(),
            Ipld::Bool(b) => s.serialize_bool(*b),
            Ipld::Integer(i) => match i64::try_from(*i) {
                Ok(v) => s.serialize_i64(v),
                Err(_) => s.serialize_str(&i.to_string()),
            },
            Ipld::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Ipld::Float(_) => s.serialize_unit(),
            Ipld::String(v) => s.serialize_str(v),
            Ipld::Bytes(b) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "$bytes",
                    &base64::engine::general_purpose::STANDARD_NO_PAD.encode(b),
                )?;
                m.end()
            }
            Ipld::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&JsonView(item))?;
                }
                seq.end()
            }
            Ipld::Map(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, &JsonView(v))?;
                }
                m.end()
            }
            Ipld::Link(cid) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("$link", &cid.to_string())?;
                m.end()
            }
        }
    }
}

/// The length of the first complete CBOR item in `bytes`, without decoding it. Used to
/// split a firehose frame into header and body. Refuses indefinite lengths (not DAG-CBOR)
/// and nesting deeper than `max_depth`.
pub fn cbor_item_len(bytes: &[u8], max_depth: usize) -> Result<usize, DataError> {
    fn head(b: &[u8], pos: usize) -> Result<(u8, u64, usize), DataError> {
        let short = || DataError::Decode("truncated CBOR".into());
        let first = *b.get(pos).ok_or_else(short)?;
        let major = first >> 5;
        let info = first & 0x1f;
        let (arg, len) = match info {
            0..=23 => (u64::from(info), 1),
            24..=27 => {
                let n = 1usize << (info - 24);
                let raw = b.get(pos + 1..pos + 1 + n).ok_or_else(short)?;
                (
                    raw.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)),
                    1 + n,
                )
            }
            _ => {
                return Err(DataError::Decode(
                    "indefinite or reserved CBOR length".into(),
                ))
            }
        };
        Ok((major, arg, len))
    }
    fn item(b: &[u8], pos: usize, depth: usize) -> Result<usize, DataError> {
        if depth == 0 {
            return Err(DataError::Decode("CBOR nested too deeply".into()));
        }
        let (major, arg, hlen) = head(b, pos)?;
        let mut end = pos + hlen;
        match major {
            0 | 1 | 7 => {}
            2 | 3 => {
                let n = usize::try_from(arg).map_err(|_| DataError::Decode("length".into()))?;
                end = end
                    .checked_add(n)
                    .ok_or_else(|| DataError::Decode("length".into()))?;
            }
            4 | 5 => {
                let per = if major == 5 { 2 } else { 1 };
                let count = arg
                    .checked_mul(per)
                    .ok_or_else(|| DataError::Decode("length".into()))?;
                for _ in 0..count {
                    end = item(b, end, depth - 1)?;
                }
            }
            6 => end = item(b, end, depth - 1)?,
            _ => unreachable!("major type is three bits"),
        }
        if end > b.len() {
            return Err(DataError::Decode("truncated CBOR".into()));
        }
        Ok(end)
    }
    item(bytes, 0, max_depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_len_splits_concatenated_values() {
        let mut buf = to_cbor(&serde_json::json!({"op": 1, "t": "#commit"})).expect("encode");
        let first = buf.len();
        buf.extend(to_cbor(&vec![1u32, 2, 3]).expect("encode"));
        assert_eq!(cbor_item_len(&buf, 64).expect("len"), first);
        assert!(cbor_item_len(&buf[..first - 1], 64).is_err());
    }
}
