//! The in-memory filesystem of one simulated container: directories and regular files, what the
//! built-in commands of [`crate::exec`] (`ls`, `cat`, `tar`, redirections) read and write, and
//! what `kubectl cp` copies into and out of a container.
//!
//! Invariants: every path is absolute and normalised (no `.`/`..`, no trailing `/`, `/` is the
//! root); every entry's parent is a directory; the total size of file contents stays at most
//! [`ContainerFs::capacity`].

use std::collections::BTreeMap;

/// What a path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir,
    /// A regular file with its contents and permission bits.
    File {
        /// Contents.
        data: Vec<u8>,
        /// Permission bits (e.g. `0o644`).
        mode: u32,
    },
}

/// Why a filesystem operation failed (the messages are those of coreutils, so commands can
/// print them as a real container would).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// Nothing at that path, or a parent is missing.
    #[error("No such file or directory")]
    NotFound,
    /// A file where a directory was needed.
    #[error("Not a directory")]
    NotADirectory,
    /// A directory where a file was needed.
    #[error("Is a directory")]
    IsADirectory,
    /// The path exists already.
    #[error("File exists")]
    Exists,
    /// The directory is not empty.
    #[error("Directory not empty")]
    NotEmpty,
    /// The container's storage is full.
    #[error("No space left on device")]
    NoSpace,
}

/// Default capacity of a container's filesystem (file contents).
pub const DEFAULT_CAPACITY: usize = 64 * 1024 * 1024;

/// One container's filesystem.
#[derive(Debug, Clone)]
pub struct ContainerFs {
    entries: BTreeMap<String, Entry>,
    used: usize,
    capacity: usize,
}

/// Normalises `path` (absolute, or relative to `cwd`): resolves `.` and `..` (never above `/`).
pub fn normalize(cwd: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let joined;
    let full = if path.starts_with('/') {
        path
    } else {
        joined = format!("{cwd}/{path}");
        &joined
    };
    for seg in full.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

impl ContainerFs {
    /// An empty filesystem (only `/`) holding at most `capacity` bytes of file contents.
    pub fn new(capacity: usize) -> Self {
        let mut entries = BTreeMap::new();
        entries.insert("/".to_string(), Entry::Dir);
        Self {
            entries,
            used: 0,
            capacity,
        }
    }

    /// The filesystem a simulated container starts with: the usual top-level directories and a
    /// few files in `/etc`.
    pub fn initial(hostname: &str) -> Self {
        let mut fs = Self::new(DEFAULT_CAPACITY);
        for d in [
            "/bin", "/etc", "/home", "/root", "/tmp", "/usr", "/usr/bin", "/var", "/var/log",
        ] {
            // The parents exist and the names are new: cannot fail.
            let _ = fs.mkdir_all(d);
        }
        let _ = fs.write("/etc/hostname", format!("{hostname}\n").into_bytes(), 0o644);
        let _ = fs.write(
            "/etc/os-release",
            b"NAME=\"Simulated Linux\"\nID=sim\nVERSION_ID=1\n".to_vec(),
            0o644,
        );
        fs
    }

    /// Most bytes of file contents this filesystem holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of file contents stored.
    pub fn used(&self) -> usize {
        self.used
    }

    /// What is at `path` (normalised).
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Whether `path` is a directory.
    pub fn is_dir(&self, path: &str) -> bool {
        matches!(self.entries.get(path), Some(Entry::Dir))
    }

    /// The contents of the file at `path`.
    pub fn read(&self, path: &str) -> Result<&[u8], FsError> {
        match self.entries.get(path) {
            Some(Entry::File { data, .. }) => Ok(data),
            Some(Entry::Dir) => Err(FsError::IsADirectory),
            None => Err(FsError::NotFound),
        }
    }

    fn check_parent(&self, path: &str) -> Result<(), FsError> {
        match self.entries.get(parent(path)) {
            Some(Entry::Dir) => Ok(()),
            Some(Entry::File { .. }) => Err(FsError::NotADirectory),
            None => Err(FsError::NotFound),
        }
    }

    /// Creates or replaces the file at `path`; its directory must exist.
    pub fn write(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<(), FsError> {
        self.check_parent(path)?;
        let old = match self.entries.get(path) {
            Some(Entry::Dir) => return Err(FsError::IsADirectory),
            Some(Entry::File { data, .. }) => data.len(),
            None => 0,
        };
        let used = self.used - old + data.len();
        if used > self.capacity {
            return Err(FsError::NoSpace);
        }
        self.used = used;
        self.entries
            .insert(path.to_string(), Entry::File { data, mode });
        debug_assert!(self.used <= self.capacity);
        Ok(())
    }

    /// Appends to the file at `path`, creating it if missing.
    pub fn append(&mut self, path: &str, more: &[u8]) -> Result<(), FsError> {
        let mut data = match self.read(path) {
            Ok(d) => d.to_vec(),
            Err(FsError::NotFound) => Vec::new(),
            Err(e) => return Err(e),
        };
        data.extend_from_slice(more);
        self.write(path, data, 0o644)
    }

    /// Creates the directory `path`; its parent must exist.
    pub fn mkdir(&mut self, path: &str) -> Result<(), FsError> {
        if self.entries.contains_key(path) {
            return Err(FsError::Exists);
        }
        self.check_parent(path)?;
        self.entries.insert(path.to_string(), Entry::Dir);
        Ok(())
    }

    /// Creates `path` and any missing parents (`mkdir -p`).
    pub fn mkdir_all(&mut self, path: &str) -> Result<(), FsError> {
        match self.entries.get(path) {
            Some(Entry::Dir) => return Ok(()),
            Some(Entry::File { .. }) => return Err(FsError::NotADirectory),
            None => {}
        }
        if path != "/" {
            self.mkdir_all(parent(path))?;
        }
        self.entries.insert(path.to_string(), Entry::Dir);
        Ok(())
    }

    /// Removes `path`; a non-empty directory only if `recursive`.
    pub fn remove(&mut self, path: &str, recursive: bool) -> Result<(), FsError> {
        match self.entries.get(path) {
            None => return Err(FsError::NotFound),
            Some(Entry::File { data, .. }) => {
                self.used -= data.len();
                self.entries.remove(path);
                return Ok(());
            }
            Some(Entry::Dir) => {}
        }
        let below: Vec<String> = self.descendants(path).map(|(p, _)| p.clone()).collect();
        if !below.is_empty() && !recursive {
            return Err(FsError::NotEmpty);
        }
        for p in below {
            if let Some(Entry::File { data, .. }) = self.entries.remove(&p) {
                self.used -= data.len();
            }
        }
        if path != "/" {
            self.entries.remove(path);
        }
        Ok(())
    }

    /// Entries below directory `dir` (all depths), in path order.
    pub fn descendants<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a String, &'a Entry)> {
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| p.as_str() != "/")
    }

    /// Names of the direct children of directory `dir`, sorted.
    pub fn list(&self, dir: &str) -> Result<Vec<String>, FsError> {
        match self.entries.get(dir) {
            Some(Entry::Dir) => {}
            Some(Entry::File { .. }) => return Err(FsError::NotADirectory),
            None => return Err(FsError::NotFound),
        }
        Ok(self
            .descendants(dir)
            .filter(|(p, _)| parent(p) == dir)
            .map(|(p, _)| p.rsplit('/').next().unwrap_or("").to_string())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("/", "tmp/../etc/./x"), "/etc/x");
        assert_eq!(normalize("/tmp", "../../.."), "/");
        assert_eq!(normalize("/a", "/b/"), "/b");
    }

    #[test]
    fn files_and_dirs() {
        let mut fs = ContainerFs::initial("pod");
        assert_eq!(fs.read("/etc/hostname"), Ok(&b"pod\n"[..]));
        assert_eq!(fs.write("/nope/x", vec![], 0o644), Err(FsError::NotFound));
        fs.mkdir_all("/a/b/c").unwrap_or_else(|e| panic!("{e}"));
        fs.write("/a/b/f", b"xyz".to_vec(), 0o600)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs.list("/a/b"), Ok(vec!["c".to_string(), "f".to_string()]));
        assert_eq!(fs.remove("/a", false), Err(FsError::NotEmpty));
        let used = fs.used();
        fs.remove("/a", true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs.used(), used - 3);
        assert!(fs.get("/a/b/f").is_none());
        let mut small = ContainerFs::new(4);
        assert_eq!(
            small.write("/f", b"12345".to_vec(), 0o644),
            Err(FsError::NoSpace)
        );
    }
}
