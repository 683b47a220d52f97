//! Piece bitfield in BEP 3 bit order (piece 0 is the high bit of byte 0).

/// A fixed-size set of pieces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: usize,
    count: usize,
}

impl Bitfield {
    /// An empty bitfield for `pieces` pieces.
    pub fn new(pieces: usize) -> Self {
        Bitfield {
            bytes: vec![0; pieces.div_ceil(8)],
            len: pieces,
            count: 0,
        }
    }

    /// A bitfield with every piece set.
    pub fn full(pieces: usize) -> Self {
        let mut b = Self::new(pieces);
        for i in 0..pieces {
            b.set(i, true);
        }
        b
    }

    /// Parses a wire bitfield; `None` if its length is wrong or spare bits
    /// are set (BEP 3 says peers sending such a bitfield should be dropped).
    pub fn from_bytes(bytes: &[u8], pieces: usize) -> Option<Self> {
        if bytes.len() != pieces.div_ceil(8) {
            return None;
        }
        let spare = bytes.len() * 8 - pieces;
        if spare > 0 {
            let last = *bytes.last()?;
            let mask = (1u8 << spare) - 1;
            if last & mask != 0 {
                return None;
            }
        }
        let count = bytes.iter().map(|b| b.count_ones() as usize).sum();
        Some(Bitfield {
            bytes: bytes.to_vec(),
            len: pieces,
            count,
        })
    }

    /// Whether piece `i` is set; out of range is `false`.
    pub fn get(&self, i: usize) -> bool {
        if i >= self.len {
            return false;
        }
        self.bytes
            .get(i / 8)
            .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }

    /// Sets or clears piece `i`; out of range is ignored (caller validates
    /// indices from the wire, this just must not panic).
    pub fn set(&mut self, i: usize, value: bool) {
        if i >= self.len {
            return;
        }
        let old = self.get(i);
        if let Some(b) = self.bytes.get_mut(i / 8) {
            let bit = 0x80 >> (i % 8);
            if value {
                *b |= bit;
            } else {
                *b &= !bit;
            }
        }
        match (old, value) {
            (false, true) => self.count += 1,
            (true, false) => self.count -= 1,
            _ => {}
        }
    }

    /// Number of pieces set (cached, O(1)).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Number of pieces.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the bitfield covers zero pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every piece is set.
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    /// Wire representation.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Iterates over the indices that are set.
    pub fn iter_set(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(move |&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_order_and_count() {
        let mut b = Bitfield::new(10);
        b.set(0, true);
        b.set(9, true);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count(), 2);
        b.set(9, true);
        assert_eq!(b.count(), 2);
        b.set(0, false);
        assert_eq!(b.count(), 1);
        assert!(!b.get(0));
        assert!(b.get(9));
        assert!(!b.get(10));
        b.set(100, true);
        assert_eq!(b.count(), 1);
        assert_eq!(b.len(), 10);
    }

    #[test]
    fn from_bytes_validation() {
        assert!(Bitfield::from_bytes(&[0xff], 9).is_none());
        assert!(Bitfield::from_bytes(&[0xff, 0x80, 0], 9).is_none());
        assert!(Bitfield::from_bytes(&[0xff, 0x40], 9).is_none());
        let b = Bitfield::from_bytes(&[0xff, 0x80], 9).unwrap();
        assert!(b.is_full());
        assert_eq!(b.count(), 9);
        let b = Bitfield::from_bytes(&[0xa5], 8).unwrap();
        assert_eq!(b.count(), 4);
        assert_eq!(b.iter_set().collect::<Vec<_>>(), vec![0, 2, 5, 7]);
        assert!(Bitfield::from_bytes(&[], 0).unwrap().is_full());
    }

    #[test]
    fn full() {
        let b = Bitfield::full(13);
        assert!(b.is_full());
        assert_eq!(b.as_bytes(), &[0xff, 0xf8]);
    }
}
