//! A strict reader for the few fixed DAG-CBOR shapes on the relay's hot path (commit blocks,
//! MST nodes, CAR headers): borrowed bytes, no intermediate values. It accepts only the
//! canonical form (shortest-form lengths, keys in DAG-CBOR order, each once); callers fall
//! back to the generic decoder (`serde_ipld_dagcbor`) for anything else, so what is accepted
//! never differs from the generic path, only how fast.

use cid::Cid;

/// Why the reader stopped: the input is not the canonical shape asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotCanonical;

type R<T> = Result<T, NotCanonical>;

/// A cursor over one DAG-CBOR item's bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// True when every byte has been read.
    pub fn is_done(&self) -> bool {
        self.pos == self.bytes.len()
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(NotCanonical)?;
        let out = self.bytes.get(self.pos..end).ok_or(NotCanonical)?;
        self.pos = end;
        Ok(out)
    }

    fn peek(&self) -> R<u8> {
        self.bytes.get(self.pos).copied().ok_or(NotCanonical)
    }

    /// A head of `major` type; its argument, in shortest form.
    fn head(&mut self, major: u8) -> R<u64> {
        let first = self.peek()?;
        if first >> 5 != major {
            return Err(NotCanonical);
        }
        self.pos += 1;
        let info = first & 0x1f;
        let (arg, min) = match info {
            0..=23 => return Ok(u64::from(info)),
            24 => (u64::from(self.take(1)?[0]), 24),
            25 => {
                let b = self.take(2)?;
                (u64::from(u16::from_be_bytes([b[0], b[1]])), 0x100)
            }
            26 => {
                let b = self.take(4)?;
                (
                    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                    0x1_0000,
                )
            }
            27 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(self.take(8)?);
                (u64::from_be_bytes(a), 0x1_0000_0000)
            }
            _ => return Err(NotCanonical),
        };
        if arg < min {
            return Err(NotCanonical);
        }
        Ok(arg)
    }

    fn len(&mut self, major: u8) -> R<usize> {
        usize::try_from(self.head(major)?).map_err(|_| NotCanonical)
    }

    /// A map's entry count.
    pub fn map(&mut self) -> R<usize> {
        self.len(5)
    }

    /// An array's length.
    pub fn array(&mut self) -> R<usize> {
        self.len(4)
    }

    /// An unsigned integer.
    pub fn uint(&mut self) -> R<u64> {
        self.head(0)
    }

    /// A byte string.
    pub fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.len(2)?;
        self.take(n)
    }

    /// A text string.
    pub fn text(&mut self) -> R<&'a str> {
        let n = self.len(3)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| NotCanonical)
    }

    /// The map key `key` (a text string), exactly.
    pub fn key(&mut self, key: &str) -> R<()> {
        if self.text()? == key {
            Ok(())
        } else {
            Err(NotCanonical)
        }
    }

    /// `null`, consumed, or `false` (nothing consumed).
    pub fn null(&mut self) -> R<bool> {
        if self.peek()? == 0xf6 {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// `true` or `false`.
    pub fn bool(&mut self) -> R<bool> {
        let b = match self.peek()? {
            0xf4 => false,
            0xf5 => true,
            _ => return Err(NotCanonical),
        };
        self.pos += 1;
        Ok(b)
    }

    /// A text string or `null`.
    pub fn text_or_null(&mut self) -> R<Option<&'a str>> {
        if self.null()? {
            Ok(None)
        } else {
            self.text().map(Some)
        }
    }

    /// A CID link: tag 42 over a byte string holding 0x00 and the binary CID.
    pub fn cid(&mut self) -> R<Cid> {
        if self.take(2)? != [0xd8, 42] {
            return Err(NotCanonical);
        }
        let raw = self.bytes()?;
        let (&prefix, cid) = raw.split_first().ok_or(NotCanonical)?;
        if prefix != 0 {
            return Err(NotCanonical);
        }
        let mut r = cid;
        let parsed = Cid::read_bytes(&mut r).map_err(|_| NotCanonical)?;
        if !r.is_empty() {
            return Err(NotCanonical);
        }
        Ok(parsed)
    }

    /// A CID link or `null`.
    pub fn cid_or_null(&mut self) -> R<Option<Cid>> {
        if self.null()? {
            Ok(None)
        } else {
            self.cid().map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{to_cbor, DAG_CBOR};

    #[test]
    fn reads_what_the_generic_encoder_writes() {
        let cid = crate::data::cid_for(DAG_CBOR, b"x");
        #[derive(serde::Serialize)]
        struct S<'a> {
            a: u64,
            bb: &'a str,
            #[serde(with = "serde_bytes")]
            ccc: &'a [u8],
            dddd: Option<Cid>,
            eeeee: Cid,
        }
        let bytes = to_cbor(&S {
            a: 70_000,
            bb: "hé",
            ccc: &[1, 2, 3],
            dddd: None,
            eeeee: cid,
        })
        .expect("encode");
        let mut r = Reader::new(&bytes);
        assert_eq!(r.map(), Ok(5));
        assert_eq!(r.key("a").and_then(|_| r.uint()), Ok(70_000));
        assert_eq!(r.key("bb").and_then(|_| r.text()), Ok("hé"));
        assert_eq!(r.key("ccc").and_then(|_| r.bytes()), Ok(&[1u8, 2, 3][..]));
        assert_eq!(r.key("dddd").and_then(|_| r.cid_or_null()), Ok(None));
        assert_eq!(r.key("eeeee").and_then(|_| r.cid()), Ok(cid));
        assert!(r.is_done());
    }

    #[test]
    fn refuses_what_is_not_shortest_form() {
        // 5 written with a one-byte argument.
        assert_eq!(Reader::new(&[0x18, 5]).uint(), Err(NotCanonical));
        assert_eq!(Reader::new(&[0x18, 24]).uint(), Ok(24));
        // Indefinite-length text.
        assert_eq!(
            Reader::new(&[0x7f, 0x61, b'a', 0xff]).text(),
            Err(NotCanonical)
        );
        // Truncated.
        assert_eq!(Reader::new(&[0x63, b'a']).text(), Err(NotCanonical));
        // A link whose bytes do not start with the identity multibase prefix.
        assert_eq!(Reader::new(&[0xd8, 42, 0x41, 1]).cid(), Err(NotCanonical));
    }
}
