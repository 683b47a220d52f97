//! A torrent's files on disk as a tree below its directory: deleted
//! (`torrent-remove` with `delete-local-data`) or moved
//! (`torrent-set-location` with `move`).
//!
//! Blocking file-system calls, bounded by the torrent's file list (itself
//! bounded by the metainfo size limit) and confined to its directory:
//! only the files the metainfo names are touched, found by walking from
//! the torrent's directory one component at a time with `O_NOFOLLOW`, so
//! a symbolic link planted anywhere below it (say `name -> /etc`) is never
//! followed: a file behind one is left alone and said so. Components are
//! plain names (the metainfo parser refuses `..`, `.`, `/` and empty
//! ones). The torrent's directory itself is the user's choice and is
//! opened as it is. Afterwards, the folders the files were in are removed
//! when empty; nothing else is. Deleting runs on the disk thread, after
//! the pieces queued before it, so no late write brings a file back.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// One file's path below the torrent's directory, by components.
pub type Components = Vec<Vec<u8>>;

/// A torrent's files: the directory they are below and each one's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataTree {
    root: PathBuf,
    files: Vec<Components>,
}

impl DataTree {
    /// The files `files` below `root`.
    pub fn new(root: PathBuf, files: Vec<Components>) -> DataTree {
        DataTree { root, files }
    }

    /// The directory the files are below.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Deletes the files, then the folders they were in if empty. Files
    /// already gone are fine. Goes on past a file it cannot delete and
    /// says, at the end, how many it could not and why the first.
    pub fn delete(&self) -> Result<(), String> {
        let root = match open_dir(&self.root) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(format!("cannot open {}: {e}", self.root.display())),
        };
        let mut problems = Problems::default();
        for file in &self.files {
            let Some((last, dirs)) = file.split_last() else {
                continue;
            };
            let parent = match walk(&root, dirs) {
                Ok(Some(fd)) => fd,
                Ok(None) => continue,
                Err(e) => {
                    problems.note(&self.root, file, e);
                    continue;
                }
            };
            match unlinkat(&parent, &last[..], UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => problems.note(&self.root, file, e),
            }
        }
        remove_empty_dirs(&root, &self.files);
        problems.into_result("deleted")
    }

    /// Moves the files to `to`, keeping their paths below it; files not
    /// there (never written) are passed over. A file that cannot be moved
    /// (another file in its place, another file system) undoes the moves
    /// made and says why.
    pub fn move_to(&self, to: &Path) -> Result<(), String> {
        if self.root == to {
            return Ok(());
        }
        let src = match open_dir(&self.root) {
            Ok(fd) => fd,
            // Nothing written yet: nothing to move.
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(format!("cannot open {}: {e}", self.root.display())),
        };
        std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
        let dst = open_dir(to).map_err(|e| format!("cannot open {}: {e}", to.display()))?;
        let mut moved: Vec<&Components> = Vec::new();
        for file in &self.files {
            match move_one(&src, &dst, file) {
                Ok(true) => moved.push(file),
                Ok(false) => {}
                Err(e) => {
                    for back in moved.iter().rev() {
                        let _ = move_one(&dst, &src, back);
                    }
                    remove_empty_dirs(&dst, &self.files);
                    let why = match e {
                        Errno::EXDEV => "it is on another file system (move the data yourself, then set the location without moving)".to_string(),
                        Errno::EEXIST => "a file of that name is there already".to_string(),
                        e => e.to_string(),
                    };
                    return Err(format!(
                        "cannot move {} to {}: {why}",
                        join(&self.root, file).display(),
                        to.display()
                    ));
                }
            }
        }
        remove_empty_dirs(&src, &self.files);
        Ok(())
    }
}

/// Moves one file between two roots, making its folders; `false` if it
/// was not there.
fn move_one(src: &OwnedFd, dst: &OwnedFd, file: &Components) -> Result<bool, Errno> {
    let Some((last, dirs)) = file.split_last() else {
        return Ok(false);
    };
    let Some(from) = walk(src, dirs)? else {
        return Ok(false);
    };
    let to = make_dirs(dst, dirs)?;
    match renameat2(
        &from,
        &last[..],
        &to,
        &last[..],
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    open(
        path.as_os_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens `dirs` below `root` without following any symbolic link;
/// `None` if one is missing.
fn walk(root: &OwnedFd, dirs: &[Vec<u8>]) -> Result<Option<OwnedFd>, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd = openat(root.as_fd(), ".", flags, Mode::empty())?;
    for d in dirs {
        fd = match openat(&fd, &d[..], flags, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
    }
    Ok(Some(fd))
}

/// Opens `dirs` below `root`, making those missing, never following a
/// symbolic link.
fn make_dirs(root: &OwnedFd, dirs: &[Vec<u8>]) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd = openat(root.as_fd(), ".", flags, Mode::empty())?;
    for d in dirs {
        match mkdirat(&fd, &d[..], Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        fd = openat(&fd, &d[..], flags, Mode::empty())?;
    }
    Ok(fd)
}

/// Removes the folders holding `files` below `root` that are empty,
/// deepest first; those holding anything else stay.
fn remove_empty_dirs(root: &OwnedFd, files: &[Components]) {
    let mut dirs: BTreeSet<&[Vec<u8>]> = BTreeSet::new();
    for f in files {
        for depth in 1..f.len() {
            if let Some(prefix) = f.get(..depth) {
                dirs.insert(prefix);
            }
        }
    }
    let mut deepest_first: Vec<&[Vec<u8>]> = dirs.into_iter().collect();
    deepest_first.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for dir in deepest_first {
        let Some((last, parents)) = dir.split_last() else {
            continue;
        };
        if let Ok(Some(parent)) = walk(root, parents) {
            // Not empty, gone, or a link: left as it is.
            let _ = unlinkat(&parent, &last[..], UnlinkatFlags::RemoveDir);
        }
    }
}

fn join(root: &Path, file: &Components) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in file {
        p.push(std::ffi::OsStr::from_bytes(c));
    }
    p
}

/// Files that could not be handled: how many, and the first one's story.
#[derive(Default)]
struct Problems {
    count: usize,
    first: Option<String>,
}

impl Problems {
    fn note(&mut self, root: &Path, file: &Components, e: Errno) {
        self.count += 1;
        if self.first.is_none() {
            let why = match e {
                Errno::ELOOP | Errno::ENOTDIR => {
                    "a symbolic link or a file stands where a folder should; left alone".into()
                }
                e => e.to_string(),
            };
            self.first = Some(format!("{}: {why}", join(root, file).display()));
        }
    }

    fn into_result(self, what: &str) -> Result<(), String> {
        match self.first {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} file(s) not {what}; the first: {first}",
                self.count
            )),
        }
    }
}
