//! Where model bytes come from: an async, random-access byte source per file,
//! and a set of files opened by name.
//!
//! Loading never holds a whole checkpoint: it reads a safetensors header, then
//! one tensor's byte range at a time. So a source only has to serve ranges,
//! which every place a model can live offers: a native file, an `ArrayBuffer`
//! already in memory, a browser `File` (`File.slice(a, b).arrayBuffer()`), or a
//! URL (`fetch` with a `Range: bytes=a-(b-1)` header).
//!
//! The traits use `async fn` and never require `Send`: in the browser the
//! futures hold JS values, which are `!Send`. Native impls here are
//! [`FileSource`]/[`DirFiles`] (std::fs, not on wasm32) and
//! [`MemorySource`]/[`MemoryFiles`] (both targets). The browser impls (`File`
//! and `fetch` ranges) implement the same two traits in `src/web/`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{Error, Result};

/// One file's bytes, read by range.
#[allow(async_fn_in_trait)] // futures are deliberately not `Send` (wasm32)
pub trait ByteSource {
    /// The file name, for error messages (`model-00001-of-00002.safetensors`).
    fn name(&self) -> &str;

    /// Length of the file in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Exactly `len` bytes starting at `offset`. A range that ends past
    /// [`len`](Self::len) is an [`Error::File`].
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>>;

    /// The whole file. Only for small files (config.json, tokenizer.json, the
    /// shard index); checkpoints are read tensor by tensor.
    async fn read_all(&self) -> Result<Vec<u8>> {
        let len = usize::try_from(self.len()).map_err(|_| file_error(self.name(), "too large to read into memory"))?;
        self.read(0, len).await
    }
}

/// The files of one model folder, opened by name (`config.json`,
/// `model.safetensors`, `model-00001-of-00002.safetensors`, `tokenizer.json`).
#[allow(async_fn_in_trait)] // futures are deliberately not `Send` (wasm32)
pub trait ModelFiles {
    type Source: ByteSource;

    /// Where the files are, for messages: a folder path, a URL, "memory".
    fn location(&self) -> &str;

    /// The file called `name`, or `None` when the folder has no such file.
    /// Other failures (a name with a path separator, an I/O or network error)
    /// are errors.
    async fn try_open(&self, name: &str) -> Result<Option<Self::Source>>;

    /// The file called `name`; its absence is an [`Error::File`].
    async fn open(&self, name: &str) -> Result<Self::Source> {
        self.try_open(name).await?.ok_or_else(|| file_error(name, format!("not found in {}", self.location())))
    }
}

/// Checks that `name` is one plain file name: no directories, no `..`. Names
/// come from users and from shard indexes, and must not reach outside the
/// model folder.
pub fn check_file_name(name: &str) -> Result<()> {
    let bad = name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']);
    if bad {
        return Err(file_error(name, "not a plain file name inside the model folder"));
    }
    Ok(())
}

/// Checks `offset..offset + len` against a file of `file_len` bytes.
fn check_range(name: &str, file_len: u64, offset: u64, len: usize) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(file_error(
            name,
            format!("read of {len} bytes at offset {offset} is past the end of the file ({file_len} bytes)"),
        )),
    }
}

pub(crate) fn file_error(file: &str, detail: impl Into<String>) -> Error {
    Error::File { file: file.to_string(), detail: detail.into() }
}

/// Bytes already in memory (a test's bytes, an `ArrayBuffer` copied from JS).
/// Cloning shares the bytes.
#[derive(Debug, Clone)]
pub struct MemorySource {
    name: String,
    bytes: Arc<[u8]>,
}

impl MemorySource {
    pub fn new(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Self {
        MemorySource { name: name.into(), bytes: bytes.into() }
    }
}

impl ByteSource for MemorySource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        check_range(&self.name, self.len(), offset, len)?;
        let start = offset as usize;
        Ok(self.bytes[start..start + len].to_vec())
    }
}

/// A model folder held in memory: file name → bytes.
#[derive(Debug, Clone, Default)]
pub struct MemoryFiles {
    files: BTreeMap<String, Arc<[u8]>>,
}

impl MemoryFiles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the file `name`.
    pub fn insert(&mut self, name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> &mut Self {
        self.files.insert(name.into(), bytes.into());
        self
    }

    /// Removes the file `name`, if present.
    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.files.remove(name);
        self
    }
}

impl ModelFiles for MemoryFiles {
    type Source = MemorySource;

    fn location(&self) -> &str {
        "memory"
    }

    async fn try_open(&self, name: &str) -> Result<Option<MemorySource>> {
        check_file_name(name)?;
        Ok(self.files.get(name).map(|b| MemorySource::new(name, b.clone())))
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{DirFiles, FileSource};

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::{check_file_name, check_range, ByteSource, ModelFiles};
    use crate::{Error, Result};

    /// A native file, read by range (seek + read; nothing is mapped or cached).
    #[derive(Debug)]
    pub struct FileSource {
        name: String,
        len: u64,
        /// Behind a mutex because a read is two calls (seek, read) on one cursor.
        file: Mutex<File>,
    }

    impl FileSource {
        /// Opens `path`; the source is named by its file name.
        pub fn open(path: impl AsRef<Path>) -> Result<Self> {
            let path = path.as_ref();
            let io = |source| Error::Io { file: path.display().to_string(), source };
            let file = File::open(path).map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            Ok(FileSource { name, len, file: Mutex::new(file) })
        }
    }

    impl ByteSource for FileSource {
        fn name(&self) -> &str {
            &self.name
        }

        fn len(&self) -> u64 {
            self.len
        }

        async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
            check_range(&self.name, self.len, offset, len)?;
            let io = |source| Error::Io { file: self.name.clone(), source };
            let mut buf = vec![0u8; len];
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            file.read_exact(&mut buf).map_err(io)?;
            Ok(buf)
        }
    }

    /// A model folder on disk.
    #[derive(Debug, Clone)]
    pub struct DirFiles {
        dir: PathBuf,
        location: String,
    }

    impl DirFiles {
        /// The folder `dir`; an error if it is not a readable directory.
        pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
            let dir = dir.into();
            let location = dir.display().to_string();
            let meta = std::fs::metadata(&dir).map_err(|source| Error::Io { file: location.clone(), source })?;
            if !meta.is_dir() {
                return Err(super::file_error(&location, "is not a directory"));
            }
            Ok(DirFiles { dir, location })
        }

        pub fn path(&self) -> &Path {
            &self.dir
        }
    }

    impl ModelFiles for DirFiles {
        type Source = FileSource;

        fn location(&self) -> &str {
            &self.location
        }

        async fn try_open(&self, name: &str) -> Result<Option<FileSource>> {
            check_file_name(name)?;
            let path = self.dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            FileSource::open(path).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        pollster::block_on(f)
    }

    #[test]
    fn memory_source_reads_ranges_and_rejects_past_the_end() {
        let s = MemorySource::new("a.bin", vec![1u8, 2, 3, 4, 5]);
        assert_eq!(block_on(s.read(1, 3)).unwrap(), vec![2, 3, 4]);
        assert_eq!(block_on(s.read(5, 0)).unwrap(), Vec::<u8>::new());
        let err = block_on(s.read(3, 3)).unwrap_err();
        assert!(matches!(&err, Error::File { file, .. } if file == "a.bin"), "{err}");
        assert!(block_on(s.read(u64::MAX, 2)).is_err());
    }

    #[test]
    fn file_names_must_stay_in_the_folder() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        check_file_name("model-00001-of-00002.safetensors").unwrap();
        let mut files = MemoryFiles::new();
        files.insert("config.json", b"{}".to_vec());
        assert!(block_on(files.try_open("tokenizer.json")).unwrap().is_none());
        assert!(block_on(files.try_open("../config.json")).is_err());
        let err = block_on(files.open("tokenizer.json")).unwrap_err();
        assert!(err.to_string().contains("tokenizer.json: not found"), "{err}");
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn file_source_reads_ranges() {
        let path = std::env::temp_dir().join(format!("webpeft-source-{}.bin", std::process::id()));
        std::fs::write(&path, (0u8..100).collect::<Vec<_>>()).unwrap();
        let s = FileSource::open(&path).unwrap();
        assert_eq!(s.len(), 100);
        assert_eq!(block_on(s.read(95, 5)).unwrap(), vec![95, 96, 97, 98, 99]);
        assert!(block_on(s.read(96, 5)).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}

/// The name adapters record for a model read from a base URL, as PEFT records
/// a hub repo: `org/name` for `https://huggingface.co/org/name/resolve/…`,
/// else the URL itself (without a trailing slash).
pub fn url_model_name(base: &str) -> String {
    let rest = base.strip_prefix("https://huggingface.co/").unwrap_or("");
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [org, name, "resolve", ..] => format!("{org}/{name}"),
        _ => base.trim_end_matches('/').to_string(),
    }
}

#[cfg(test)]
mod url_name_tests {
    use super::url_model_name;

    #[test]
    fn hub_urls_name_their_repo_and_others_themselves() {
        let hub = "https://huggingface.co/HuggingFaceTB/SmolLM2-135M/resolve/main/";
        assert_eq!(url_model_name(hub), "HuggingFaceTB/SmolLM2-135M");
        assert_eq!(url_model_name("http://127.0.0.1:8080/default-model/"), "http://127.0.0.1:8080/default-model");
        assert_eq!(url_model_name("https://huggingface.co/x"), "https://huggingface.co/x");
    }
}
