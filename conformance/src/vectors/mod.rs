//! Wire test vectors: generated from `PROTOCOL.md` ([`generate`]), stored as JSON in
//! `conformance/vectors/` ([`model`]), and checked against the reference codec and connection
//! ([`check`]). [`describe`] turns a frame into its JSON meaning.

pub mod check;
pub mod describe;
pub mod generate;
pub mod model;

use std::path::{Path, PathBuf};

pub use generate::{Generated, generate};
pub use model::{FrameVector, MalformedVector, VectorFile};

use crate::spec::{Spec, SpecError};

/// Problems reading, generating or writing vectors.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid vector file: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// `PROTOCOL.md` of this workspace.
pub fn workspace_spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/PROTOCOL.md")
}

/// `conformance/vectors/` of this workspace.
pub fn workspace_vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn read(path: &Path) -> Result<String, VectorError> {
    std::fs::read_to_string(path).map_err(|source| VectorError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses the specification file and generates the vectors.
pub fn generate_from_file(spec_path: &Path) -> Result<Generated, VectorError> {
    let spec = Spec::parse(&read(spec_path)?)?;
    Ok(generate(&spec)?)
}

/// Writes the generated files into `dir` (created if missing).
pub fn write(dir: &Path, generated: &Generated) -> Result<Vec<PathBuf>, VectorError> {
    std::fs::create_dir_all(dir).map_err(|source| VectorError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let rendered = generated.render().map_err(|source| VectorError::Json {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, text) in rendered {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| VectorError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// The files in `dir` that differ from what the generator produces now.
pub fn stale_files(dir: &Path, generated: &Generated) -> Result<Vec<PathBuf>, VectorError> {
    let rendered = generated.render().map_err(|source| VectorError::Json {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(rendered
        .into_iter()
        .map(|(name, text)| (dir.join(name), text))
        .filter(|(path, text)| std::fs::read_to_string(path).ok().as_deref() != Some(text))
        .map(|(path, _)| path)
        .collect())
}

/// The vector files of `dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub frames: VectorFile<FrameVector>,
    pub handshake: VectorFile<FrameVector>,
    pub malformed: VectorFile<MalformedVector>,
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, VectorError> {
    serde_json::from_str(&read(path)?).map_err(|source| VectorError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `frames.json`, `handshake.json` and `malformed.json` from `dir`.
pub fn load(dir: &Path) -> Result<Loaded, VectorError> {
    Ok(Loaded {
        frames: parse(&dir.join("frames.json"))?,
        handshake: parse(&dir.join("handshake.json"))?,
        malformed: parse(&dir.join("malformed.json"))?,
    })
}

impl Loaded {
    pub fn len(&self) -> usize {
        self.frames.vectors.len() + self.handshake.vectors.len() + self.malformed.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every vector against the reference implementation: `(name, result)` per vector.
    pub fn check(&self) -> Vec<(String, Result<(), String>)> {
        let frames = self
            .frames
            .vectors
            .iter()
            .chain(&self.handshake.vectors)
            .map(|v| (v.name.clone(), check::check_frame_vector(v)));
        let malformed = self
            .malformed
            .vectors
            .iter()
            .map(|v| (v.name.clone(), check::check_malformed_vector(v)));
        frames.chain(malformed).collect()
    }
}
