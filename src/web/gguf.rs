//! GGUF export in the browser: the file leaves wasm in fixed-size chunks
//! through a JS callback, so neither wasm nor JS ever holds it whole (the page
//! turns each chunk into a `Blob`, which the browser may keep on disk; a
//! worker can write them to an OPFS sync access handle instead).
//!
//! The weights come from the files the model was loaded from (picked `File`s,
//! Range requests to its URL, or the buffers it was given), re-read tensor by
//! tensor as `webpeft export-gguf` reads a folder: never from the GPU copy,
//! which may be quantized (q8, nf4) or f16. The adapter comes from the GPU,
//! written as its PEFT files first.

use std::io::{self, Write};

use js_sys::{Function, Uint8Array};
use serde::Deserialize;
use wasm_bindgen::JsValue;

use super::files::{js_text, WebFiles};
use crate::export::gguf::{export_lora, export_model, GgmlType, GgufOptions};
use crate::model::source::MemorySource;
use crate::{Error, Result};

/// Bytes per chunk handed to JS, unless `chunkBytes` says otherwise.
pub const CHUNK_BYTES: usize = 4 << 20;

/// `Model.exportGguf`'s options (types.rs declares them for TypeScript).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct GgufExportOptions {
    /// "merged" (base + adapter) or "lora" (the adapter alone).
    pub kind: Option<String>,
    /// "f16" (default), "q8_0", or "f32" for an adapter.
    #[serde(rename = "type")]
    pub ty: Option<String>,
    pub name: Option<String>,
    pub tokenizer_pre: Option<String>,
    pub chunk_bytes: Option<usize>,
}

/// A [`Write`] that hands its bytes to `on_chunk(Uint8Array)` in pieces of
/// `chunk` bytes (the last one shorter); each piece is a fresh JS array, and
/// the wasm buffer is reused. A callback that throws fails the export.
pub struct JsChunks {
    on_chunk: Function,
    buf: Vec<u8>,
    chunk: usize,
}

impl JsChunks {
    pub fn new(on_chunk: Function, chunk: Option<usize>) -> Result<JsChunks> {
        let chunk = chunk.unwrap_or(CHUNK_BYTES);
        if chunk == 0 {
            return Err(Error::GgufExport { what: "chunkBytes".into(), detail: "must be at least 1".into() });
        }
        Ok(JsChunks { on_chunk, buf: Vec::with_capacity(chunk), chunk })
    }

    fn emit(&mut self) -> io::Result<()> {
        let chunk = Uint8Array::from(self.buf.as_slice());
        self.buf.clear();
        self.on_chunk
            .call1(&JsValue::NULL, &chunk)
            .map(|_| ())
            .map_err(|e| io::Error::other(format!("the chunk callback threw: {}", js_text(&e))))
    }
}

impl Write for JsChunks {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (self.chunk - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.chunk {
                self.emit()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.emit()
    }
}

/// `general.name` by default: the last part of the model's name or URL (the
/// folder's name, as the CLI's default).
fn default_name(source: Option<&str>) -> String {
    source
        .map(|s| s.trim_end_matches('/'))
        .and_then(|s| s.rsplit('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("model")
        .to_string()
}

/// Writes the GGUF `o` asks for to `out`: `model` (the files the model was
/// loaded from) with `adapter` (its PEFT files) merged, or the adapter alone.
/// Returns the file's length.
pub async fn export(
    model: &WebFiles,
    source: Option<&str>,
    adapter: Vec<(String, Vec<u8>)>,
    o: GgufExportOptions,
    on_chunk: Function,
) -> Result<u64> {
    let out = JsChunks::new(on_chunk, o.chunk_bytes)?;
    let ty_name = o.ty.as_deref().unwrap_or("f16");
    let ty = GgmlType::from_outtype(ty_name).ok_or_else(|| Error::GgufExport {
        what: "type".into(),
        detail: format!("{ty_name:?}: \"f16\" or \"q8_0\" (\"f32\" too for kind \"lora\")"),
    })?;
    let opts = GgufOptions { ty, name: o.name.unwrap_or_else(|| default_name(source)), tokenizer_pre: o.tokenizer_pre };
    let adapter = WebFiles::Memory(adapter.into_iter().map(|(n, b)| (n.clone(), MemorySource::new(n, b))).collect());
    match o.kind.as_deref().unwrap_or("merged") {
        "merged" => export_model(model, Some(&adapter), &opts, out).await,
        "lora" => export_lora(model, &adapter, &opts, out).await,
        other => Err(Error::GgufExport {
            what: "kind".into(),
            detail: format!(
                "{other:?}: \"merged\" (the model with the adapter folded in) or \"lora\" (the adapter alone)"
            ),
        }),
    }
}
