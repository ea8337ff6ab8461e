//! Reading and writing the small files auth uses: atomic replacement, owner-only secret files, and
//! change stamps for reloading.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What a file looked like when it was read: used to skip reloads of unchanged files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    pub(crate) fn of(path: &Path) -> io::Result<Self> {
        let meta = fs::metadata(path)?;
        Ok(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

/// Reads a whole UTF-8 file together with its stamp (taken before reading, so a write racing with the
/// read makes the next `reload_if_changed` read again).
pub(crate) fn read_with_stamp(path: &Path) -> io::Result<(String, Option<FileStamp>)> {
    let stamp = FileStamp::of(path).ok();
    let text = fs::read_to_string(path)?;
    Ok((text, stamp))
}

/// Writes `contents` to `path` by writing a sibling temporary file and renaming it over `path`, so
/// readers see the old or the new file, never half of one. With `secret`, the file is created readable
/// and writable by its owner only (on Unix).
pub(crate) fn write_atomic(path: &Path, contents: &[u8], secret: bool) -> io::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temporary file is useless once the write failed.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_stamps_change() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f.yaml");
        write_atomic(&path, b"one", false)?;
        let (text, stamp1) = read_with_stamp(&path)?;
        assert_eq!(text, "one");
        write_atomic(&path, b"three", true)?;
        let (text, stamp2) = read_with_stamp(&path)?;
        assert_eq!(text, "three");
        assert_ne!(stamp1, stamp2, "length changed, so the stamp must differ");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        Ok(())
    }
}
