//! Unique-viewer sketches: Apache DataSketches HLL (sparse at low cardinality, mergeable
//! at any size, and readable by DataSketches in Python, Java and C++).

use datasketches::hll::{HllSketch, HllType, HllUnion};
use std::fmt;

/// log2 of the register count when dense: 4096 registers, about 1.6% standard error.
pub(crate) const LG_K: u8 = 12;

/// A mergeable distinct-count sketch of viewer ids.
///
/// Low cardinalities stay in DataSketches' list/set modes (4 bytes per viewer), so the
/// common case of a video with a handful of viewers in a minute costs tens of bytes; it
/// turns dense (4-bit registers on the wire) only when that is smaller.
#[derive(Clone)]
pub struct UniqueSketch {
    union: HllUnion,
}

/// A sketch blob that DataSketches could not read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable unique-viewer sketch: {0}")]
pub struct SketchError(String);

impl Default for UniqueSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl UniqueSketch {
    /// An empty sketch.
    pub fn new() -> Self {
        // LG_K is a constant inside [4, 21]; HllUnion::new only fails outside it.
        let union = HllUnion::new(LG_K).unwrap_or_else(|_| unreachable!("LG_K is in range"));
        Self { union }
    }

    /// Adds a viewer, identified by a 64-bit hash of their id.
    pub fn insert(&mut self, viewer_hash: u64) {
        self.union.update_value(viewer_hash);
    }

    /// Adds every viewer of `other`.
    pub fn merge(&mut self, other: &UniqueSketch) {
        self.union.update(&other.union.to_sketch(HllType::Hll8));
    }

    /// Adds every viewer of a serialised sketch (as produced by [`UniqueSketch::to_bytes`]).
    pub fn merge_bytes(&mut self, bytes: &[u8]) -> Result<(), SketchError> {
        let sketch = HllSketch::deserialize(bytes).map_err(|e| SketchError(e.to_string()))?;
        self.union.update(&sketch);
        Ok(())
    }

    /// Reads a serialised sketch.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SketchError> {
        let mut s = Self::new();
        s.merge_bytes(bytes)?;
        Ok(s)
    }

    /// The DataSketches HLL_4 serialisation (compact list/set modes when sparse).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.union.to_sketch(HllType::Hll4).serialize()
    }

    /// The estimated number of distinct viewers.
    pub fn estimate(&self) -> f64 {
        self.union.estimate()
    }

    /// Whether no viewer was added.
    pub fn is_empty(&self) -> bool {
        self.union.is_empty()
    }

    /// Approximate heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.union.estimated_size()
    }
}

/// A sketch is stored as its DataSketches bytes (checkpoints of the merger's state).
impl serde::Serialize for UniqueSketch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> serde::Deserialize<'de> for UniqueSketch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde_bytes_vec(d)?;
        UniqueSketch::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Reads a byte string (postcard writes `serialize_bytes` as a length and the bytes).
fn serde_bytes_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("sketch bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_byte_buf(V)
}

impl fmt::Debug for UniqueSketch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UniqueSketch")
            .field("estimate", &self.estimate())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sets_are_exact_and_tiny() {
        let mut s = UniqueSketch::new();
        for v in [1u64, 2, 3, 2, 1] {
            s.insert(v);
        }
        assert_eq!(s.estimate().round() as u64, 3);
        let bytes = s.to_bytes();
        assert!(bytes.len() < 40, "3 viewers took {} bytes", bytes.len());
        assert_eq!(UniqueSketch::from_bytes(&bytes).unwrap().estimate().round() as u64, 3);
    }

    #[test]
    fn merge_is_a_union() {
        let (mut a, mut b) = (UniqueSketch::new(), UniqueSketch::new());
        for v in 0..5_000u64 {
            a.insert(v);
        }
        for v in 2_500..10_000u64 {
            b.insert(v);
        }
        a.merge_bytes(&b.to_bytes()).unwrap();
        let est = a.estimate();
        assert!((est - 10_000.0).abs() / 10_000.0 < 0.05, "estimate {est}");
    }

    #[test]
    fn a_sketch_survives_serde() {
        let mut s = UniqueSketch::new();
        for v in 0..1_000u64 {
            s.insert(v);
        }
        let bytes = postcard::to_allocvec(&s).unwrap();
        let back: UniqueSketch = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.estimate(), s.estimate());
        assert!(postcard::from_bytes::<UniqueSketch>(&[3, 1, 2, 3]).is_err());
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(UniqueSketch::from_bytes(&[1, 2, 3]).is_err());
    }
}
