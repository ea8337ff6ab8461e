//! The `tar` command of the simulated containers, enough for `kubectl cp` both ways:
//! `tar cf - PATH…` (into the pod's stdout) and `tar xf - [-C DIR]` / `tar -xmf - -C DIR`
//! (from stdin), plus `tar tf -`. Archives are read and written with the `tar` crate; regular
//! files and directories only (links and devices are skipped with a warning).

use std::io::Read as _;

use crate::container_fs::{ContainerFs, Entry, normalize};

/// What `tar` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `c`: write an archive to stdout.
    Create,
    /// `x`: read an archive from stdin and extract it.
    Extract,
    /// `t`: list an archive from stdin.
    List,
}

/// Parsed `tar` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarArgs {
    /// c, x or t.
    pub mode: Mode,
    /// `-C DIR`.
    pub directory: Option<String>,
    /// `v`.
    pub verbose: bool,
    /// Members to archive (create).
    pub paths: Vec<String>,
}

impl TarArgs {
    /// Parses GNU-style arguments: bundled flags with or without a dash (`xmf`, `-xmf`),
    /// `f -` (only stdin/stdout archives), `-C DIR`, then paths.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut mode = None;
        let mut directory = None;
        let mut verbose = false;
        let mut paths = Vec::new();
        let mut it = args.iter().enumerate().peekable();
        let mut only_paths = false;
        while let Some((i, a)) = it.next() {
            let bundled = !only_paths
                && ((a.starts_with('-') && a.len() > 1 && !a.starts_with("--"))
                    || (i == 0 && !a.starts_with('-')));
            if a == "--" {
                only_paths = true;
                continue;
            }
            if !bundled {
                paths.push(a.clone());
                continue;
            }
            for c in a.trim_start_matches('-').chars() {
                match c {
                    'c' => mode = Some(Mode::Create),
                    'x' => mode = Some(Mode::Extract),
                    't' => mode = Some(Mode::List),
                    'v' => verbose = true,
                    'f' => match it.next() {
                        Some((_, f)) if f == "-" => {}
                        Some((_, f)) => {
                            return Err(format!(
                                "{f}: only `-` (stdin/stdout) archives are supported"
                            ));
                        }
                        None => return Err("option requires an argument -- 'f'".into()),
                    },
                    'C' => match it.next() {
                        Some((_, d)) => directory = Some(d.clone()),
                        None => return Err("option requires an argument -- 'C'".into()),
                    },
                    'm' | 'p' | 'o' | 'h' => {}
                    other => return Err(format!("unsupported option -- '{other}'")),
                }
            }
        }
        let mode = mode.ok_or("You must specify one of the '-Acdtrux' options")?;
        if mode == Mode::Create && paths.is_empty() {
            return Err("Cowardly refusing to create an empty archive".into());
        }
        Ok(Self {
            mode,
            directory,
            verbose,
            paths,
        })
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Archives `paths` (relative to `dir`); returns the archive and warnings for missing paths.
/// Member names drop the leading `/`, as GNU tar does.
pub fn create(
    fs: &ContainerFs,
    dir: &str,
    paths: &[String],
) -> Result<(Vec<u8>, Vec<String>), String> {
    let mut b = tar::Builder::new(Vec::new());
    let mut warnings = Vec::new();
    let add = |b: &mut tar::Builder<Vec<u8>>, abs: &str, name: &str, e: &Entry| {
        let r = match e {
            Entry::Dir => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755);
                b.append_data(&mut h, format!("{name}/"), std::io::empty())
            }
            Entry::File { data, mode } => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64, *mode);
                b.append_data(&mut h, name, &data[..])
            }
        };
        r.map_err(|e| format!("{abs}: {e}"))
    };
    for p in paths {
        let abs = normalize(dir, p);
        let Some(entry) = fs.get(&abs) else {
            warnings.push(format!("{p}: Cannot stat: No such file or directory"));
            continue;
        };
        let name = if p.starts_with('/') {
            abs.trim_start_matches('/').to_string()
        } else {
            p.trim_end_matches('/').to_string()
        };
        let name = if name.is_empty() {
            ".".to_string()
        } else {
            name
        };
        add(&mut b, &abs, &name, entry)?;
        if matches!(entry, Entry::Dir) {
            for (child, e) in fs.descendants(&abs) {
                let rel = child[abs.len()..].trim_start_matches('/');
                add(&mut b, child, &format!("{name}/{rel}"), e)?;
            }
        }
    }
    if !warnings.is_empty() && warnings.len() == paths.len() {
        return Err(format!(
            "{}\ntar: Exiting with failure status due to previous errors",
            warnings.join("\ntar: ")
        ));
    }
    let archive = b.into_inner().map_err(|e| e.to_string())?;
    Ok((archive, warnings))
}

/// Extracts `archive` under `dir`; member paths never leave `dir`. Returns the member names.
pub fn extract(fs: &mut ContainerFs, dir: &str, archive: &[u8]) -> Result<Vec<String>, String> {
    if !fs.is_dir(dir) {
        return Err(format!("{dir}: Cannot open: No such file or directory"));
    }
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(archive);
    let entries = ar
        .entries()
        .map_err(|e| format!("This does not look like a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("damaged archive: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("bad member name: {e}"))?
            .to_string_lossy()
            .into_owned();
        // Resolved inside `dir`: `..` cannot climb above it.
        let rel = normalize("/", &name);
        let target = normalize(dir, rel.trim_start_matches('/'));
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        if kind.is_dir() {
            fs.mkdir_all(&target).map_err(|e| format!("{name}: {e}"))?;
        } else if kind.is_file() {
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| format!("{name}: damaged archive: {e}"))?;
            if let Some(parent) = target.rsplit_once('/').map(|(p, _)| p)
                && !parent.is_empty()
            {
                fs.mkdir_all(parent).map_err(|e| format!("{name}: {e}"))?;
            }
            fs.write(&target, data, mode)
                .map_err(|e| format!("{name}: Cannot open: {e}"))?;
        } else {
            // Links, devices, FIFOs: not in this filesystem.
            continue;
        }
        names.push(name);
    }
    Ok(names)
}

/// The member names of `archive`.
pub fn list(archive: &[u8]) -> Result<Vec<String>, String> {
    let mut ar = tar::Archive::new(archive);
    let entries = ar
        .entries()
        .map_err(|e| format!("This does not look like a tar archive: {e}"))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("damaged archive: {e}"))?;
        let path = entry.path().map_err(|e| format!("bad member name: {e}"))?;
        names.push(path.to_string_lossy().into_owned());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A damaged archive is an error, never a panic or a write outside the directory.
        #[test]
        fn hostile_archives(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cut in 0usize..3000) {
            let mut fs = ContainerFs::initial("p");
            fs.mkdir_all("/x").map_err(|e| TestCaseError::fail(e.to_string()))?;
            fs.write("/x/f", b"abc".to_vec(), 0o644).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (good, _) = create(&fs, "/", &["/x".to_string()]).map_err(TestCaseError::fail)?;
            let mut damaged = good[..cut.min(good.len())].to_vec();
            damaged.extend_from_slice(&bytes);
            let before: Vec<String> = fs.descendants("/").map(|(p, _)| p.clone()).collect();
            let _ = extract(&mut fs, "/tmp", &damaged);
            let _ = list(&damaged);
            let after: Vec<String> = fs.descendants("/").map(|(p, _)| p.clone()).collect();
            for p in after.iter().filter(|p| !before.contains(p)) {
                prop_assert!(p.starts_with("/tmp/"), "{} written outside /tmp", p);
            }
        }
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_what_kubectl_runs() {
        let a = TarArgs::parse(&args("-xmf - -C /tmp")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.mode, Mode::Extract);
        assert_eq!(a.directory.as_deref(), Some("/tmp"));
        let a = TarArgs::parse(&args("cf - /tmp/x")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.mode, Mode::Create);
        assert_eq!(a.paths, vec!["/tmp/x".to_string()]);
        assert!(TarArgs::parse(&args("cf out.tar x")).is_err());
        assert!(TarArgs::parse(&args("cf -")).is_err());
        assert!(TarArgs::parse(&args("-zxf -")).is_err());
    }

    #[test]
    fn round_trips_and_stays_inside() {
        let mut fs = ContainerFs::initial("p");
        fs.mkdir_all("/data/sub").unwrap_or_else(|e| panic!("{e}"));
        let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        fs.write("/data/sub/bin", bytes.clone(), 0o600)
            .unwrap_or_else(|e| panic!("{e}"));
        let (ar, warn) = create(&fs, "/", &["/data".to_string()]).unwrap_or_else(|e| panic!("{e}"));
        assert!(warn.is_empty());
        assert_eq!(
            list(&ar).unwrap_or_default(),
            vec!["data/", "data/sub/", "data/sub/bin"]
        );
        let mut other = ContainerFs::initial("q");
        extract(&mut other, "/tmp", &ar).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other.read("/tmp/data/sub/bin"), Ok(&bytes[..]));
        // A hostile member name cannot escape the target directory.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 1, 0o644);
        h.as_old_mut().name[..12].copy_from_slice(b"../../etc/zz");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap_or_else(|e| panic!("{e}"));
        let evil = b.into_inner().unwrap_or_default();
        extract(&mut other, "/tmp", &evil).unwrap_or_else(|e| panic!("{e}"));
        assert!(other.get("/etc/zz").is_none());
        assert_eq!(other.read("/tmp/etc/zz"), Ok(&b"x"[..]));
        assert!(extract(&mut other, "/tmp", b"garbage").is_err() || list(b"garbage").is_ok());
    }
}
