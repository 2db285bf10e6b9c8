//! `webpeft export-gguf`: the merged model, or the LoRA adapter alone, as a
//! GGUF file for llama.cpp (written as its own converters write it).

use std::io::{BufWriter, Write};
use std::path::Path;

use webpeft::export::gguf::{export_lora, export_model, GgmlType, GgufOptions};
use webpeft::model::source::DirFiles;

/// The folder's name: what `general.name` defaults to.
fn folder_name(dir: &Path) -> String {
    std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into())
}

/// Writes `out` tensor by tensor (never the whole file in memory). A failed
/// export removes what it had written: no truncated .gguf is left behind.
pub async fn export_gguf(
    model: &Path,
    adapter: Option<&Path>,
    ty: &str,
    lora_only: bool,
    name: Option<String>,
    tokenizer_pre: Option<String>,
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let ty =
        GgmlType::from_outtype(ty).ok_or_else(|| format!("--type {ty:?}: f16 or q8_0 (f32 too with --lora-only)"))?;
    if lora_only && adapter.is_none() {
        return Err("--lora-only needs --adapter".into());
    }
    let name = name.unwrap_or_else(|| folder_name(adapter.filter(|_| lora_only).unwrap_or(model)));
    let opts = GgufOptions { ty, name, tokenizer_pre };
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let written = write(model, adapter, lora_only, &opts, BufWriter::new(file)).await;
    let len = match written {
        Ok(len) => len,
        Err(e) => {
            // Only a file this call created or truncated; never a device such as /dev/full.
            if std::fs::metadata(out).is_ok_and(|m| m.is_file()) {
                let _ = std::fs::remove_file(out);
            }
            return Err(e);
        }
    };
    let what = if lora_only {
        "LoRA adapter"
    } else if adapter.is_some() {
        "merged model"
    } else {
        "model"
    };
    out!("{}: {what} for llama.cpp ({:.2} MiB)", out.display(), len as f64 / 1048576.0);
    Ok(())
}

async fn write(
    model: &Path,
    adapter: Option<&Path>,
    lora_only: bool,
    opts: &GgufOptions,
    sink: BufWriter<std::fs::File>,
) -> Result<u64, Box<dyn std::error::Error>> {
    let files = DirFiles::new(model)?;
    let adapter = adapter.map(DirFiles::new).transpose()?;
    Ok(match (lora_only, &adapter) {
        (true, Some(adapter)) => export_lora(&files, adapter, opts, sink).await?,
        _ => export_model(&files, adapter.as_ref(), opts, sink).await?,
    })
}
