//! A torrent's data on disk for the RPC: which files `torrent-remove`
//! with `delete-local-data` deletes and `torrent-set-location` with
//! `move` moves (the file work itself is [`crate::engine::tree`]'s).

use std::path::Path;

use crate::engine::tree::{Components, DataTree};
use crate::registry::Torrent;

/// A torrent's files to delete once its removal is durable (see
/// [`super::RpcReply::delete_data`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRemoval {
    id: u64,
    tree: DataTree,
}

impl DataRemoval {
    /// What deleting torrent `t`'s data means; `None` while its files are
    /// not known (no metadata yet: nothing of it was written).
    pub fn of(t: &Torrent) -> Option<DataRemoval> {
        Some(DataRemoval {
            id: t.id,
            tree: tree_of(t)?,
        })
    }

    /// The torrent whose data this is.
    pub fn torrent(&self) -> u64 {
        self.id
    }

    /// The files to delete.
    pub fn tree(&self) -> &DataTree {
        &self.tree
    }

    /// The files to delete, to hand to the disk thread.
    pub fn into_tree(self) -> DataTree {
        self.tree
    }

    /// Deletes the files now, on this thread (tests; the daemon deletes
    /// on the disk thread, after the torrent's queued writes).
    pub fn run(&self) -> Result<(), String> {
        self.tree
            .delete()
            .map_err(|e| format!("torrent {}: {e}", self.id))
    }
}

/// Moves torrent `t`'s files from its directory to `to` (see
/// [`DataTree::move_to`]).
pub fn move_files(t: &Torrent, to: &Path) -> Result<(), String> {
    match tree_of(t) {
        Some(tree) => tree.move_to(to),
        None => Ok(()),
    }
}

/// Torrent `t`'s files below its directory, once its metadata is known.
fn tree_of(t: &Torrent) -> Option<DataTree> {
    Some(DataTree::new(t.directory.clone(), file_components(t)?))
}

/// Each file's components below the torrent's directory: under its
/// folder for a torrent of several files.
fn file_components(t: &Torrent) -> Option<Vec<Components>> {
    let m = t.meta.as_ref()?;
    Some(
        m.files
            .iter()
            .map(|f| {
                let mut c = Vec::with_capacity(f.path.len() + 1);
                if m.multi_file {
                    c.push(m.name.clone());
                }
                c.extend(f.path.iter().cloned());
                c
            })
            .collect(),
    )
}
