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

/// Writes `out` tensor by tensor (never the whole file in memory).
pub async fn export_gguf(
    model: &Path,
    adapter: Option<&Path>,
    ty: &str,
    lora_only: bool,
    name: Option<String>,
    tokenizer_pre: Option<String>,
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let ty = match ty {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "q8_0" => GgmlType::Q8_0,
        other => return Err(format!("--type {other:?}: f16 or q8_0 (f32 too with --lora-only)").into()),
    };
    let files = DirFiles::new(model)?;
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let sink = BufWriter::new(file);
    let len = if lora_only {
        let adapter = adapter.ok_or("--lora-only needs --adapter")?;
        let opts = GgufOptions { ty, name: name.unwrap_or_else(|| folder_name(adapter)), tokenizer_pre };
        export_lora(&files, &DirFiles::new(adapter)?, &opts, sink).await?
    } else {
        let opts = GgufOptions { ty, name: name.unwrap_or_else(|| folder_name(model)), tokenizer_pre };
        let adapter = adapter.map(DirFiles::new).transpose()?;
        export_model(&files, adapter.as_ref(), &opts, sink).await?
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
