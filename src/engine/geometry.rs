//! How a torrent's bytes are cut into pieces and blocks: the one place
//! that knows piece sizes. The metainfo, the verifier, the storage, the
//! picker and the peer connection all ask it.

/// Size of a request block (the de-facto standard; larger ones get dropped).
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// A request: `length` bytes at `begin` in `piece`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    /// Piece index.
    pub piece: u32,
    /// Byte offset within the piece (a multiple of [`BLOCK_SIZE`]).
    pub begin: u32,
    /// Length in bytes (`BLOCK_SIZE`, or less for a piece's last block).
    pub length: u32,
}

/// Why a block does not lie inside the torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// No such piece.
    Piece,
    /// Zero length, or longer than the caller allows.
    Length,
    /// It ends past its piece.
    End,
}

/// Piece length, total size and piece count of a torrent, consistent by
/// construction: `pieces` is `total / piece_length` rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    piece_length: u64,
    total: u64,
    pieces: u32,
}

impl Geometry {
    /// The geometry of `total` bytes in pieces of `piece_length`. `None`
    /// for a zero piece length, or more pieces than a `u32` index (less
    /// one, so a count always fits) can name.
    pub fn new(piece_length: u64, total: u64) -> Option<Geometry> {
        if piece_length == 0 {
            return None;
        }
        let pieces = u32::try_from(total.div_ceil(piece_length)).ok()?;
        (pieces != u32::MAX).then_some(Geometry {
            piece_length,
            total,
            pieces,
        })
    }

    /// Bytes per piece (the last may be shorter).
    pub fn piece_length(&self) -> u64 {
        self.piece_length
    }

    /// Bytes in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Number of pieces.
    pub fn pieces(&self) -> u32 {
        self.pieces
    }

    /// Offset of piece `i`'s first byte in the torrent.
    pub fn piece_start(&self, i: u32) -> u64 {
        i as u64 * self.piece_length
    }

    /// Bytes in piece `i` (0 if out of range).
    pub fn piece_size(&self, i: u32) -> u64 {
        if i >= self.pieces {
            return 0;
        }
        self.piece_length.min(self.total - self.piece_start(i))
    }

    /// Blocks of [`BLOCK_SIZE`] in piece `i`.
    pub fn blocks_in(&self, i: u32) -> usize {
        self.piece_size(i).div_ceil(BLOCK_SIZE as u64) as usize
    }

    /// Block `idx` of `piece` (the last block of the last piece may be
    /// short; past the piece's end, a zero-length block).
    pub fn block(&self, piece: u32, idx: usize) -> Block {
        let size = self.piece_size(piece);
        let begin = idx as u64 * BLOCK_SIZE as u64;
        Block {
            piece,
            begin: begin.min(u32::MAX as u64) as u32,
            length: size.saturating_sub(begin).min(BLOCK_SIZE as u64) as u32,
        }
    }

    /// Whether `b` lies inside its piece and is 1 to `max_len` bytes long.
    pub fn check_block(&self, b: &Block, max_len: u32) -> Result<(), BlockError> {
        if b.piece >= self.pieces {
            return Err(BlockError::Piece);
        }
        if b.length == 0 || b.length > max_len {
            return Err(BlockError::Length);
        }
        if b.begin as u64 + b.length as u64 > self.piece_size(b.piece) {
            return Err(BlockError::End);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_total_exactly() {
        for (pl, total) in [(32, 100), (32, 96), (1, 1), (7, 0), (1 << 20, 5 << 20)] {
            let g = Geometry::new(pl, total).unwrap();
            let sum: u64 = (0..g.pieces()).map(|i| g.piece_size(i)).sum();
            assert_eq!(sum, total, "{pl} {total}");
            assert_eq!(g.piece_size(g.pieces()), 0);
            for i in 0..g.pieces() {
                let blocks: u64 = (0..g.blocks_in(i))
                    .map(|b| g.block(i, b).length as u64)
                    .sum();
                assert_eq!(blocks, g.piece_size(i));
            }
        }
    }

    #[test]
    fn bad_geometries_and_blocks_are_refused() {
        assert_eq!(Geometry::new(0, 10), None);
        assert_eq!(Geometry::new(1, u32::MAX as u64), None, "count must fit");
        assert!(Geometry::new(1, u32::MAX as u64 - 1).is_some());
        let g = Geometry::new(32 << 10, (64 << 10) + 10).unwrap();
        let b = |piece, begin, length| Block {
            piece,
            begin,
            length,
        };
        assert_eq!(g.check_block(&b(2, 0, 10), 1 << 17), Ok(()));
        assert_eq!(g.check_block(&b(2, 0, 11), 1 << 17), Err(BlockError::End));
        assert_eq!(g.check_block(&b(3, 0, 1), 1 << 17), Err(BlockError::Piece));
        assert_eq!(g.check_block(&b(0, 0, 0), 1 << 17), Err(BlockError::Length));
        assert_eq!(g.check_block(&b(0, 0, 9), 8), Err(BlockError::Length));
        assert_eq!(
            g.check_block(&b(0, u32::MAX, 16), 1 << 17),
            Err(BlockError::End),
            "no overflow"
        );
    }
}
