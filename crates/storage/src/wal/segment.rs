//! Segment files: names, creation (durably, with an optional preallocation) and listing.
//!
//! A segment is named `<seq>-<first index>.wal`, both 16 hex digits, so names sort in log
//! order; the first index is the index the segment's first entry would have (informational:
//! the header record inside is what replay trusts). A segment is created as `<name>.tmp`,
//! written with its header, preallocated, fsynced, renamed and the directory fsynced, so a
//! segment file that exists under its final name always starts with a durable header.
//! This module must not interpret records beyond writing the header it is given.

use crate::error::StorageError;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".tmp";

/// How the WAL makes appended bytes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalSync {
    /// `fdatasync`: data plus the metadata needed to read it (a grown size), not timestamps.
    Data,
    /// `fsync`: data and all metadata.
    All,
}

impl WalSync {
    pub(crate) fn sync(self, file: &File) -> io::Result<()> {
        match self {
            Self::Data => file.sync_data(),
            Self::All => file.sync_all(),
        }
    }
}

/// The file name of segment `seq` whose first entry would be `first_index`.
pub(crate) fn file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}{SUFFIX}")
}

/// The sequence number a segment file name carries.
fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    u64::from_str_radix(first, 16).ok()?;
    u64::from_str_radix(seq, 16).ok()
}

/// The segments in `dir` in sequence order. Leftover `.tmp` files (a crash while creating a
/// segment) are deleted; any other unknown file is refused rather than ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut segments = Vec::new();
    let mut removed = false;
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name.ends_with(TMP_SUFFIX) {
            std::fs::remove_file(&path)?;
            removed = true;
        } else if let Some(seq) = parse_name(&name) {
            segments.push((seq, path));
        } else {
            return Err(StorageError::corrupt(
                "raft log directory",
                format!("unexpected file {}", path.display()),
            ));
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    segments.sort();
    for pair in segments.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(StorageError::corrupt(
                "raft log directory",
                format!(
                    "segments {} and {} are not consecutive",
                    pair[0].0, pair[1].0
                ),
            ));
        }
    }
    Ok(segments)
}

/// Creates segment `seq` in `dir` holding `header` (a framed header record); returns the open
/// file and its path. Preallocates `preallocate_bytes` (zero-filled) if not zero.
pub(crate) fn create(
    dir: &Path,
    seq: u64,
    first_index: u64,
    header: &[u8],
    preallocate_bytes: u64,
) -> Result<(File, PathBuf), StorageError> {
    let path = dir.join(file_name(seq, first_index));
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", file_name(seq, first_index)));
    let file = open_rw(&tmp, true)?;
    file.write_all_at(header, 0)?;
    preallocate(&file, preallocate_bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// Opens a segment for reading and writing (`create`: a new, empty file).
pub(crate) fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .open(path)
}

/// Reserves `bytes` for `file` (zero-filled), so appends need not grow it.
pub(crate) fn preallocate(file: &File, bytes: u64) -> Result<(), StorageError> {
    if bytes == 0 || file.metadata()?.len() >= bytes {
        return Ok(());
    }
    let len = i64::try_from(bytes).map_err(io::Error::other)?;
    match nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len) {
        // Preallocation is an optimisation: without it appends simply grow the file.
        Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(io::Error::from(e).into()),
    }
}

/// fsyncs a directory, making file creations, renames and deletions in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names sort in sequence order and parse back; foreign names are not segments.
    #[test]
    fn names() {
        assert_eq!(file_name(1, 255), "0000000000000001-00000000000000ff.wal");
        assert_eq!(parse_name(&file_name(42, 7)), Some(42));
        assert!(file_name(9, 0) < file_name(10, 0));
        assert_eq!(parse_name("0000000000000001.wal"), None);
        assert_eq!(parse_name("notes.txt"), None);
    }
}
