//! An adapter folder as one `.zip` (stored entries: safetensors do not
//! compress), the browser's download format; and back.

use std::io::{Cursor, Read, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::error::{Error, Result};

fn zip_error(detail: impl std::fmt::Display) -> Error {
    Error::File { file: "adapter.zip".into(), detail: detail.to_string() }
}

/// The files as a zip archive, in the order given, at the archive's root.
pub fn to_zip(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored).large_file(false);
    for (name, bytes) in files {
        crate::model::source::check_file_name(name)?;
        w.start_file(name.as_str(), options).map_err(zip_error)?;
        w.write_all(bytes).map_err(zip_error)?;
    }
    Ok(w.finish().map_err(zip_error)?.into_inner())
}

/// The files of a zip archive (plain file names only; folders inside the
/// archive are flattened to their last component).
pub fn from_zip(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(zip_error)?;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).map_err(zip_error)?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().rsplit('/').next().unwrap_or_default().to_string();
        crate::model::source::check_file_name(&name)?;
        let mut data = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut data).map_err(zip_error)?;
        out.push((name, data));
    }
    Ok(out)
}
