//! Bytes queued for a socket: appended at the end, written from the front,
//! cleared (and a large buffer given back) once all of it is written, so
//! that idle connections hold no memory.

/// Sent bytes worth dropping from the front of an [`OutBuf`].
const COMPACT_AT: usize = 4096;

/// An output buffer with a sent offset.
#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    sent: usize,
    /// Capacity kept once drained; more is given back.
    keep: usize,
}

impl OutBuf {
    /// An empty buffer keeping at most `keep` bytes of capacity when idle.
    pub fn new(keep: usize) -> OutBuf {
        OutBuf {
            buf: Vec::new(),
            sent: 0,
            keep,
        }
    }

    /// Bytes not yet written.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// How many bytes are not yet written.
    pub fn len(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` bytes of [`OutBuf::pending`] were written.
    pub fn consume(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.buf.len());
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
            if self.buf.capacity() > self.keep {
                self.buf = Vec::new();
            }
        }
    }

    /// The buffer to append to. Sent bytes are dropped first once they
    /// outnumber the pending ones, so a buffer that is written to while it
    /// never quite drains (a fast, steady stream) stays about twice its
    /// pending size, and each byte is moved at most once more.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        if self.sent >= COMPACT_AT && self.sent >= self.buf.len() - self.sent {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_bytes_leave_and_a_drained_buffer_shrinks() {
        let mut o = OutBuf::new(4);
        o.tail().extend_from_slice(b"hello world");
        o.consume(6);
        assert_eq!(o.pending(), b"world");
        o.tail().extend_from_slice(b"!");
        assert_eq!((o.pending(), o.len()), (&b"world!"[..], 6));
        o.consume(100);
        assert!(o.is_empty());
        assert_eq!(o.tail().capacity(), 0, "big buffers are given back");
    }

    #[test]
    fn a_buffer_that_never_drains_stays_bounded() {
        let mut o = OutBuf::new(1 << 20);
        let chunk = [7u8; 1000];
        let mut written = 0usize;
        for i in 0..100_000 {
            o.tail().extend_from_slice(&chunk);
            // The writer takes a little less than is added, then catches up.
            let n = if i % 100 == 99 { o.len() - 1 } else { 990 };
            written += n;
            o.consume(n);
            assert!(
                o.tail().len() <= 2 * o.len() + COMPACT_AT + chunk.len(),
                "at {i}"
            );
        }
        assert_eq!(written + o.len(), 100_000 * chunk.len());
        assert!(o.pending().iter().all(|&b| b == 7));
    }
}
