//! Small files replaced whole and durably: written beside their final name, fsynced, renamed
//! over it, and the directory fsynced, so that a crash at any moment leaves the old file or
//! the new one complete, never a torn mix. For records of a few kilobytes (a replica's
//! identity, the admin's metadata snapshot), not for data that grows.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `dir/name` with `bytes` durably (see the module doc). Blocking.
pub fn write_file_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let with_path = |what: &str, path: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    let mut file = File::create(&tmp).map_err(|e| with_path("creating", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| with_path("writing", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(|e| with_path("renaming into", &target, e))?;
    // The rename is only durable once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path("fsyncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A written file reads back whole, a second write replaces it, and no temporary is left.
    #[test]
    fn replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        write_file_atomically(dir.path(), "f", b"first").unwrap();
        write_file_atomically(dir.path(), "f", b"second, longer").unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"second, longer");
        assert!(!dir.path().join("f.tmp").exists());
        let err = write_file_atomically(&dir.path().join("missing"), "f", b"x").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
