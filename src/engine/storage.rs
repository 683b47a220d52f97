//! Mapping pieces onto files and positioned, lazily-created file I/O.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use super::geometry::Geometry;

/// Maximum number of open file handles kept by [`Storage`]; torrents can
/// have tens of thousands of files and fds are a shared, limited resource.
pub const MAX_OPEN_FILES: usize = 16;

/// What `O_DIRECT` asks of file offsets, lengths and memory addresses
/// here: the largest logical block size in common use (4 KiB sectors).
pub const DIRECT_ALIGN: usize = 4096;

/// A reusable buffer whose start is [`DIRECT_ALIGN`]-aligned, for the
/// direct writes of [`Storage::write_direct`]: allocators align large
/// blocks to 16 bytes, not to a sector.
#[derive(Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
}

impl AlignedBuf {
    /// `len` bytes at an aligned address (contents unspecified).
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.raw.len() < len + DIRECT_ALIGN {
            self.raw = vec![0; len + DIRECT_ALIGN];
        }
        let start = self.raw.as_ptr().align_offset(DIRECT_ALIGN);
        &mut self.raw[start..start + len]
    }
}

/// Where a torrent's pieces lie: its geometry and the lengths of its
/// files, in metainfo order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// How the bytes are cut into pieces.
    pub geometry: Geometry,
    /// Length of every file, in order.
    pub files: Vec<u64>,
}

/// A contiguous run of bytes inside one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Index into [`Layout::files`].
    pub file: usize,
    /// Byte offset inside that file.
    pub offset: u64,
    /// Number of bytes (never zero).
    pub len: u64,
}

impl Layout {
    /// The layout of `files` in pieces of `piece_length`; `None` when
    /// that is no geometry (see [`Geometry::new`]) or the sizes overflow.
    pub fn new(piece_length: u64, files: Vec<u64>) -> Option<Layout> {
        let total = files.iter().try_fold(0u64, |a, &b| a.checked_add(b))?;
        Some(Layout {
            geometry: Geometry::new(piece_length, total)?,
            files,
        })
    }

    /// Total size of all files.
    pub fn total(&self) -> u64 {
        self.geometry.total()
    }

    /// Maps `len` bytes at `begin` inside `piece` onto file spans, in order,
    /// skipping zero-length files. Returns an empty vector if the range is
    /// empty or does not lie entirely inside the piece.
    ///
    /// Linear in the number of files; fine for the sizes metainfo parsing
    /// admits, and it keeps `Layout` a plain value.
    pub fn spans(&self, piece: u32, begin: u64, len: u64) -> Vec<Span> {
        let size = self.geometry.piece_size(piece);
        let end_in_piece = match begin.checked_add(len) {
            Some(e) => e,
            None => return Vec::new(),
        };
        if len == 0 || end_in_piece > size {
            return Vec::new();
        }
        // piece < pieces and begin+len <= piece size, so no overflow.
        let mut pos = self.geometry.piece_start(piece) + begin;
        let end = pos + len;
        let mut out = Vec::new();
        let mut file_start = 0u64;
        for (file, &flen) in self.files.iter().enumerate() {
            let file_end = file_start + flen;
            if pos < file_end && flen > 0 {
                let take = file_end.min(end) - pos;
                out.push(Span {
                    file,
                    offset: pos - file_start,
                    len: take,
                });
                pos += take;
                if pos == end {
                    break;
                }
            }
            file_start = file_end;
        }
        out
    }
}

/// An I/O failure on a particular file.
#[derive(Debug)]
pub struct StorageError {
    /// File the operation failed on (empty if the range was invalid).
    pub path: PathBuf,
    /// Underlying error.
    pub source: io::Error,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

struct OpenFile {
    file_index: usize,
    file: File,
    writable: bool,
    /// Opened with `O_DIRECT` (writes only, aligned).
    direct: bool,
    last_used: u64,
}

/// Piece-addressed reads and writes over a torrent's files.
///
/// Files (and their parent directories) are created on first write and
/// never preallocated, so they stay sparse until data arrives.
pub struct Storage {
    layout: Layout,
    paths: Vec<PathBuf>,
    open: Vec<OpenFile>,
    clock: u64,
    /// Files whose filesystem refused `O_DIRECT`: written through the
    /// page cache.
    no_direct: Vec<usize>,
}

impl Storage {
    /// Storage for `layout`, with `paths[i]` the on-disk path of file `i`.
    /// Nothing is touched on disk until the first write.
    pub fn new(layout: Layout, paths: Vec<PathBuf>) -> Self {
        Storage {
            layout,
            paths,
            open: Vec::new(),
            clock: 0,
            no_direct: Vec::new(),
        }
    }

    /// The layout this storage was built with.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Number of currently open file handles (at most [`MAX_OPEN_FILES`]).
    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    fn spans_or_err(&self, piece: u32, begin: u32, len: usize) -> Result<Vec<Span>, StorageError> {
        let spans = self.layout.spans(piece, begin as u64, len as u64);
        if spans.is_empty() && len > 0 {
            return Err(StorageError {
                path: PathBuf::new(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "range outside piece"),
            });
        }
        Ok(spans)
    }

    fn path(&self, file: usize) -> Result<PathBuf, StorageError> {
        self.paths.get(file).cloned().ok_or_else(|| StorageError {
            path: PathBuf::new(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no path for file"),
        })
    }

    /// Returns a cached handle for `file`, opening (and for writes, creating)
    /// it if needed and evicting the least recently used handle when full.
    /// A `direct` handle is a second one, opened with `O_DIRECT`.
    fn handle(&mut self, file: usize, write: bool, direct: bool) -> Result<&File, StorageError> {
        self.clock += 1;
        let clock = self.clock;
        if let Some(i) = self
            .open
            .iter()
            .position(|o| o.file_index == file && o.direct == direct && (o.writable || !write))
        {
            self.open[i].last_used = clock;
            return Ok(&self.open[i].file);
        }
        // A read-only handle cannot serve a write: drop it and reopen.
        self.open
            .retain(|o| o.file_index != file || o.direct != direct);
        let path = self.path(file)?;
        let err = |source| StorageError {
            path: path.clone(),
            source,
        };
        let (f, writable) = if write {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(err)?;
            }
            let flags = if direct { nix::libc::O_DIRECT } else { 0 };
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(flags)
                .open(&path)
                .map_err(err)?;
            (f, true)
        } else {
            // Prefer read-write so a later write can reuse the handle, but
            // fall back to read-only (seeding from read-only media).
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => (f, true),
                Err(_) => (File::open(&path).map_err(err)?, false),
            }
        };
        if self.open.len() >= MAX_OPEN_FILES {
            if let Some(lru) = self
                .open
                .iter()
                .enumerate()
                .min_by_key(|(_, o)| o.last_used)
                .map(|(i, _)| i)
            {
                self.open.swap_remove(lru);
            }
        }
        self.open.push(OpenFile {
            file_index: file,
            file: f,
            writable,
            direct,
            last_used: clock,
        });
        let last = self.open.len() - 1;
        Ok(&self.open[last].file)
    }

    /// Writes `data` at `begin` inside `piece`.
    pub fn write(&mut self, piece: u32, begin: u32, data: &[u8]) -> Result<(), StorageError> {
        let spans = self.spans_or_err(piece, begin, data.len())?;
        let mut rest = data;
        for s in spans {
            let (chunk, tail) = rest.split_at((s.len as usize).min(rest.len()));
            rest = tail;
            let path = self.path(s.file)?;
            self.handle(s.file, true, false)?
                .write_all_at(chunk, s.offset)
                .map_err(|source| StorageError { path, source })?;
        }
        Ok(())
    }

    /// Fills `buf` from `begin` inside `piece`. Reading a never-written file
    /// or past the written end is an error (callers only read verified data).
    pub fn read(&mut self, piece: u32, begin: u32, buf: &mut [u8]) -> Result<(), StorageError> {
        let spans = self.spans_or_err(piece, begin, buf.len())?;
        let mut rest = buf;
        for s in spans {
            let n = (s.len as usize).min(rest.len());
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            let path = self.path(s.file)?;
            self.handle(s.file, false, false)?
                .read_exact_at(chunk, s.offset)
                .map_err(|source| StorageError { path, source })?;
        }
        Ok(())
    }

    /// Writes a whole piece, bypassing the page cache (`O_DIRECT`) where
    /// the filesystem allows it and a span's start is sector-aligned, its
    /// bytes staged in `staging` (aligned memory). Copying into fresh
    /// page-cache pages is the dearest part of writing a download (and of
    /// the memory it fills); the device's DMA takes the data straight from
    /// memory. A span ending mid-sector at its file's end (the last piece)
    /// is padded, then the file cut back to its length. Anything else, and
    /// filesystems without `O_DIRECT` (tmpfs on older kernels, some network
    /// filesystems), go through [`Storage::write`]'s path.
    pub fn write_direct(
        &mut self,
        piece: u32,
        data: &[u8],
        staging: &mut AlignedBuf,
    ) -> Result<(), StorageError> {
        let spans = self.spans_or_err(piece, 0, data.len())?;
        let mut rest = data;
        for s in spans {
            let (chunk, tail) = rest.split_at((s.len as usize).min(rest.len()));
            rest = tail;
            let file_len = self.layout.files.get(s.file).copied().unwrap_or(0);
            let at_end = s.offset + s.len == file_len;
            let aligned = s.offset % DIRECT_ALIGN as u64 == 0
                && (chunk.len() % DIRECT_ALIGN == 0 || at_end)
                && !self.no_direct.contains(&s.file);
            if aligned && self.write_span_direct(s, chunk, file_len, staging)? {
                continue;
            }
            let path = self.path(s.file)?;
            self.handle(s.file, true, false)?
                .write_all_at(chunk, s.offset)
                .map_err(|source| StorageError { path, source })?;
        }
        Ok(())
    }

    /// One aligned span with `O_DIRECT`; `false` if the filesystem refuses
    /// it (then never tried again for that file).
    fn write_span_direct(
        &mut self,
        s: Span,
        chunk: &[u8],
        file_len: u64,
        staging: &mut AlignedBuf,
    ) -> Result<bool, StorageError> {
        let padded = chunk.len().next_multiple_of(DIRECT_ALIGN);
        let buf = staging.get(padded);
        buf[..chunk.len()].copy_from_slice(chunk);
        buf[chunk.len()..].fill(0);
        let path = self.path(s.file)?;
        let refused = |e: &io::Error| e.raw_os_error() == Some(nix::libc::EINVAL);
        let padded_past_end = padded != chunk.len();
        let written = match self.handle(s.file, true, true) {
            // The padding went past the file's end: cut it off.
            Ok(f) => f.write_all_at(buf, s.offset).and_then(|()| {
                if padded_past_end {
                    f.set_len(file_len)
                } else {
                    Ok(())
                }
            }),
            Err(e) if refused(&e.source) => Err(e.source),
            Err(e) => return Err(e),
        };
        match written {
            Ok(()) => Ok(true),
            Err(e) if refused(&e) => {
                log::debug!(
                    "{}: no O_DIRECT here ({e}); writing through the page cache",
                    path.display()
                );
                self.no_direct.push(s.file);
                self.open.retain(|o| !(o.file_index == s.file && o.direct));
                Ok(false)
            }
            Err(source) => Err(StorageError { path, source }),
        }
    }

    /// Creates the zero-length files (which no write ever touches), e.g. once
    /// the download completes.
    pub fn create_empty_files(&mut self) -> Result<(), StorageError> {
        for (i, &len) in self.layout.files.iter().enumerate() {
            if len != 0 {
                continue;
            }
            let path = self.path(i)?;
            let err = |source| StorageError {
                path: path.clone(),
                source,
            };
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(err)?;
            }
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(err)?;
        }
        Ok(())
    }

    /// Closes every cached handle (torrent stopped or removed).
    pub fn close_all(&mut self) {
        self.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force reference: the file and offset of absolute byte `a`.
    fn locate(files: &[u64], mut a: u64) -> (usize, u64) {
        for (i, &l) in files.iter().enumerate() {
            if a < l {
                return (i, a);
            }
            a -= l;
        }
        panic!("past end");
    }

    fn check_layout(layout: &Layout) {
        let g = layout.geometry;
        let n = g.pieces();
        for p in 0..n {
            let size = g.piece_size(p);
            for begin in 0..size {
                for len in 1..=(size - begin) {
                    let spans = layout.spans(p, begin, len);
                    // Expand spans byte by byte and compare with reference.
                    let mut a = g.piece_start(p) + begin;
                    let mut covered = 0;
                    for s in &spans {
                        assert!(s.len > 0);
                        assert!(s.offset + s.len <= layout.files[s.file]);
                        for k in 0..s.len {
                            assert_eq!(locate(&layout.files, a), (s.file, s.offset + k));
                            a += 1;
                        }
                        covered += s.len;
                    }
                    assert_eq!(covered, len);
                    // Adjacent spans are in different files.
                    for w in spans.windows(2) {
                        assert!(w[0].file < w[1].file);
                    }
                }
            }
            assert!(layout.spans(p, 0, size + 1).is_empty());
            assert!(layout.spans(p, size, 1).is_empty());
            assert!(layout.spans(p, 0, 0).is_empty());
        }
        assert!(layout.spans(n, 0, 1).is_empty());
        assert!(layout.spans(0, u64::MAX, 2).is_empty());
    }

    #[test]
    fn spans_exhaustive_awkward_layouts() {
        let layouts = [
            (4, vec![10]),
            (4, vec![8]),
            (4, vec![0, 3, 0, 0, 5, 1, 0]),
            (3, vec![1, 1, 1, 1, 1, 1, 1]),
            (5, vec![2, 0, 9, 4]),
            (7, vec![0, 0, 1]),
            (16, vec![3, 5, 0, 7]),
            (1, vec![3, 0, 2]),
        ];
        for (pl, files) in layouts {
            check_layout(&Layout::new(pl, files).unwrap());
        }
    }

    #[test]
    fn degenerate_layouts() {
        assert_eq!(Layout::new(0, vec![5]), None);
        let l = Layout::new(4, vec![0, 0]).unwrap();
        assert_eq!(l.geometry.pieces(), 0);
        assert!(l.spans(0, 0, 1).is_empty());
        assert_eq!(Layout::new(4, vec![u64::MAX, 1]), None, "overflow");
    }

    fn setup() -> (tempfile::TempDir, Layout, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(7, vec![5, 0, 11, 3, 20]).unwrap();
        let paths = (0..layout.files.len())
            .map(|i| dir.path().join(format!("d{}/sub/f{i}", i % 2)))
            .collect();
        (dir, layout, paths)
    }

    /// Every piece of `layout` written with `write_direct` in a shuffled
    /// order; the files must hold exactly the data, at exactly their
    /// lengths. Returns the storage for further checks.
    fn direct_round_trip(layout: Layout) -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..layout.files.len())
            .map(|i| dir.path().join(format!("d{i}/f")))
            .collect();
        let total = layout.total() as usize;
        let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 4099) as u8).collect();
        let mut st = Storage::new(layout.clone(), paths.clone());
        let mut staging = AlignedBuf::default();
        let g = layout.geometry;
        let mut order: Vec<u32> = (0..g.pieces()).collect();
        fastrand::Rng::with_seed(5).shuffle(&mut order);
        for p in order {
            let start = g.piece_start(p) as usize;
            let len = g.piece_size(p) as usize;
            st.write_direct(p, &data[start..start + len], &mut staging)
                .unwrap();
        }
        let mut at = 0;
        for (i, &len) in layout.files.iter().enumerate() {
            let got = fs::read(&paths[i]).unwrap_or_default();
            assert_eq!(got.len() as u64, len, "file {i}");
            assert!(got == data[at..at + len as usize], "file {i} differs");
            at += len as usize;
        }
        (dir, st)
    }

    #[test]
    fn direct_writes_of_one_file_with_a_short_last_piece() {
        let (_dir, st) = direct_round_trip(
            Layout::new(2 * DIRECT_ALIGN as u64, vec![7 * DIRECT_ALIGN as u64 + 100]).unwrap(),
        );
        // The filesystem took O_DIRECT, or said it would not.
        let direct = st.open.iter().any(|o| o.direct);
        assert!(direct || st.no_direct == [0], "{:?}", st.no_direct);
    }

    #[test]
    fn direct_writes_across_files_of_awkward_sizes() {
        direct_round_trip(
            Layout::new(
                2 * DIRECT_ALIGN as u64,
                vec![5000, 3 * DIRECT_ALIGN as u64, 1, 0, 9000],
            )
            .unwrap(),
        );
        direct_round_trip(Layout::new(16 << 10, vec![1, 40000, 16384]).unwrap());
    }

    #[test]
    fn random_order_writes_read_back() {
        for seed in 0..5 {
            let (_dir, layout, paths) = setup();
            let total = layout.total() as usize;
            let content: Vec<u8> = (0..total).map(|i| (i * 31 + 7) as u8).collect();
            let mut st = Storage::new(layout.clone(), paths);
            // Cut each piece into 3-byte chunks and write them shuffled.
            let mut chunks = Vec::new();
            let g = layout.geometry;
            for p in 0..g.pieces() {
                let size = g.piece_size(p);
                let mut b = 0;
                while b < size {
                    chunks.push((p, b, 3.min(size - b)));
                    b += 3;
                }
            }
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(&mut chunks);
            for &(p, b, l) in &chunks {
                let a = (g.piece_start(p) + b) as usize;
                st.write(p, b as u32, &content[a..a + l as usize]).unwrap();
            }
            let mut got = Vec::new();
            for p in 0..g.pieces() {
                let mut buf = vec![0; g.piece_size(p) as usize];
                st.read(p, 0, &mut buf).unwrap();
                got.extend_from_slice(&buf);
            }
            assert_eq!(got, content);
            // And via the files directly.
            st.close_all();
            let mut disk = Vec::new();
            for (i, &l) in layout.files.iter().enumerate() {
                if l > 0 {
                    disk.extend(fs::read(&st.paths[i]).unwrap());
                }
            }
            assert_eq!(disk, content);
        }
    }

    #[test]
    fn files_created_only_when_written() {
        let (dir, layout, paths) = setup();
        let mut st = Storage::new(layout, paths.clone());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut buf = [0u8; 2];
        let e = st.read(0, 0, &mut buf).unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("f0"));
        assert!(!paths[0].exists());
        // Piece 1 bytes 0..2 = absolute 7..9 = file 2 offset 2..4.
        st.write(1, 0, &[1, 2]).unwrap();
        assert!(!paths[0].exists());
        assert!(!paths[1].exists());
        assert!(paths[2].exists());
        assert_eq!(fs::metadata(&paths[2]).unwrap().len(), 4);
        assert!(!paths[4].exists());
        st.create_empty_files().unwrap();
        assert!(paths[1].exists());
    }

    #[test]
    fn invalid_ranges_are_errors() {
        let (_dir, layout, paths) = setup();
        let mut st = Storage::new(layout, paths);
        assert!(st.write(0, 5, &[0; 3]).is_err());
        assert!(st.write(99, 0, &[0]).is_err());
        assert!(st.read(0, u32::MAX, &mut [0; 1]).is_err());
        // Missing path for a file is an error, not a panic.
        let mut st = Storage::new(Layout::new(4, vec![4]).unwrap(), vec![]);
        assert!(st.write(0, 0, &[1]).is_err());
    }

    #[test]
    fn open_file_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let n = 40;
        let layout = Layout::new(2, vec![1; n]).unwrap();
        let paths: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("{i}"))).collect();
        let mut st = Storage::new(layout.clone(), paths);
        for p in 0..layout.geometry.pieces() {
            st.write(p, 0, &[p as u8, p as u8 + 100]).unwrap();
            assert!(st.open_files() <= MAX_OPEN_FILES);
        }
        assert_eq!(st.open_files(), MAX_OPEN_FILES);
        for p in (0..layout.geometry.pieces()).rev() {
            let mut b = [0; 2];
            st.read(p, 0, &mut b).unwrap();
            assert_eq!(b, [p as u8, p as u8 + 100]);
        }
        st.close_all();
        assert_eq!(st.open_files(), 0);
    }
}
