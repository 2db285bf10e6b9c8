//! Model and adapter files in the browser, read by range: a picked or dropped
//! `File` (`File.slice(a, b).arrayBuffer()`), a URL (`fetch` with a `Range`
//! header; Hugging Face's `…/resolve/main/` layout works as a base URL), or
//! bytes already in memory. Nothing reads a whole checkpoint at once.

use std::collections::BTreeMap;

use js_sys::{Promise, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::model::source::{check_file_name, ByteSource, MemorySource, ModelFiles};
use crate::{Error, Result};

#[wasm_bindgen]
extern "C" {
    /// The global `fetch` (a window's or a worker's).
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(request: &web_sys::Request) -> Promise;
}

fn file_error(file: &str, detail: impl Into<String>) -> Error {
    Error::File { file: file.to_string(), detail: detail.into() }
}

/// A JS exception or rejection as text.
pub(crate) fn js_text(v: &JsValue) -> String {
    v.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| v.as_string())
        .unwrap_or_else(|| format!("{v:?}"))
}

/// One file in the browser.
#[derive(Debug, Clone)]
pub enum WebSource {
    File { name: String, file: web_sys::File },
    Url { name: String, url: String, len: u64 },
    Memory(MemorySource),
}

async fn fetch_range(name: &str, url: &str, range: Option<(u64, u64)>) -> Result<web_sys::Response> {
    let init = web_sys::RequestInit::new();
    init.set_method("GET");
    let headers = web_sys::Headers::new().map_err(|e| file_error(name, js_text(&e)))?;
    if let Some((a, b)) = range {
        headers.set("Range", &format!("bytes={a}-{b}")).map_err(|e| file_error(name, js_text(&e)))?;
    }
    init.set_headers(&headers);
    let request = web_sys::Request::new_with_str_and_init(url, &init).map_err(|e| file_error(name, js_text(&e)))?;
    let response = JsFuture::from(global_fetch(&request))
        .await
        .map_err(|e| file_error(name, format!("fetching {url} failed: {}", js_text(&e))))?;
    response.dyn_into::<web_sys::Response>().map_err(|_| file_error(name, "fetch did not return a Response"))
}

async fn array_buffer_bytes(name: &str, promise: std::result::Result<Promise, JsValue>) -> Result<Vec<u8>> {
    let promise = promise.map_err(|e| file_error(name, js_text(&e)))?;
    let buffer =
        JsFuture::from(promise).await.map_err(|e| file_error(name, format!("reading failed: {}", js_text(&e))))?;
    Ok(Uint8Array::new(&buffer).to_vec())
}

impl ByteSource for WebSource {
    fn name(&self) -> &str {
        match self {
            WebSource::File { name, .. } | WebSource::Url { name, .. } => name,
            WebSource::Memory(m) => m.name(),
        }
    }

    fn len(&self) -> u64 {
        match self {
            WebSource::File { file, .. } => file.size() as u64,
            WebSource::Url { len, .. } => *len,
            WebSource::Memory(m) => m.len(),
        }
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let name = self.name().to_string();
        if offset + len as u64 > self.len() {
            return Err(file_error(&name, format!("range {offset}+{len} is past the end ({} bytes)", self.len())));
        }
        let bytes = match self {
            WebSource::Memory(m) => return m.read(offset, len).await,
            WebSource::File { file, .. } => {
                let blob = file
                    .slice_with_f64_and_f64(offset as f64, (offset + len as u64) as f64)
                    .map_err(|e| file_error(&name, js_text(&e)))?;
                array_buffer_bytes(&name, Ok(blob.array_buffer())).await?
            }
            WebSource::Url { url, .. } => {
                if len == 0 {
                    return Ok(Vec::new());
                }
                let response = fetch_range(&name, url, Some((offset, offset + len as u64 - 1))).await?;
                match response.status() {
                    206 => array_buffer_bytes(&name, response.array_buffer()).await?,
                    // A server without ranges sends the whole file: only acceptable for a whole-file read.
                    200 if offset == 0 && len as u64 == self.len() => {
                        array_buffer_bytes(&name, response.array_buffer()).await?
                    }
                    200 => {
                        return Err(file_error(
                            &name,
                            format!("{url} ignores Range requests; serve it with range support"),
                        ))
                    }
                    s => return Err(file_error(&name, format!("{url}: HTTP {s}"))),
                }
            }
        };
        if bytes.len() != len {
            return Err(file_error(&name, format!("asked for {len} bytes at {offset}, got {}", bytes.len())));
        }
        Ok(bytes)
    }
}

/// A model (or adapter) folder in the browser.
#[derive(Debug, Clone)]
pub enum WebFiles {
    /// Picked or dropped files, by name (`config.json`, `model.safetensors`, …).
    Files(BTreeMap<String, web_sys::File>),
    /// A base URL the files live under (with a trailing `/`).
    Url(String),
    Memory(BTreeMap<String, MemorySource>),
}

impl WebFiles {
    /// A base URL; a missing trailing slash is added.
    pub fn url(base: &str) -> WebFiles {
        let mut b = base.to_string();
        if !b.ends_with('/') {
            b.push('/');
        }
        WebFiles::Url(b)
    }
}

impl ModelFiles for WebFiles {
    type Source = WebSource;

    fn location(&self) -> &str {
        match self {
            WebFiles::Files(_) => "the chosen files",
            WebFiles::Url(u) => u,
            WebFiles::Memory(_) => "memory",
        }
    }

    async fn try_open(&self, name: &str) -> Result<Option<WebSource>> {
        check_file_name(name)?;
        Ok(match self {
            WebFiles::Files(map) => map.get(name).map(|f| WebSource::File { name: name.to_string(), file: f.clone() }),
            WebFiles::Memory(map) => map.get(name).cloned().map(WebSource::Memory),
            WebFiles::Url(base) => {
                let url = format!("{base}{name}");
                // One byte tells the length (Content-Range) and whether the file exists.
                let response = fetch_range(name, &url, Some((0, 0))).await?;
                match response.status() {
                    404 => None,
                    206 => {
                        let header = response.headers().get("Content-Range").ok().flatten().unwrap_or_default();
                        let len =
                            header.rsplit('/').next().and_then(|t| t.trim().parse::<u64>().ok()).ok_or_else(|| {
                                file_error(name, format!("{url}: no usable Content-Range header ({header:?})"))
                            })?;
                        Some(WebSource::Url { name: name.to_string(), url, len })
                    }
                    200 => {
                        // No range support: only small files can be read whole.
                        let len = response
                            .headers()
                            .get("Content-Length")
                            .ok()
                            .flatten()
                            .and_then(|t| t.parse::<u64>().ok())
                            .ok_or_else(|| {
                                file_error(name, format!("{url}: no Range support and no Content-Length"))
                            })?;
                        Some(WebSource::Url { name: name.to_string(), url, len })
                    }
                    s => return Err(file_error(name, format!("{url}: HTTP {s}"))),
                }
            }
        })
    }
}
