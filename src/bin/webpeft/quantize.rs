//! `webpeft quantize`: a pre-quantized copy of a model folder.

use std::io::Write;

use webpeft::model::checkpoint::Checkpoint;
use webpeft::model::config::Config;
use webpeft::model::source::DirFiles;
use webpeft::quant::QuantFormat;

use crate::write_model_folder;

pub async fn quantize(
    dir: &std::path::Path,
    quant: QuantFormat,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    if out.exists() && std::fs::canonicalize(out)? == std::fs::canonicalize(dir)? {
        return Err("--out must be a different folder from --model".into());
    }
    let files = DirFiles::new(dir)?;
    let config = Config::load(&files).await?;
    let checkpoint = Checkpoint::open(&files).await?;
    let bytes = webpeft::model::quantized::quantize_checkpoint(&checkpoint, &config, quant).await?;
    write_model_folder(dir, out, &bytes)?;
    let target = out.join("model.safetensors");
    let before: u64 = checkpoint.shards().iter().map(|s| s.tensors().iter().map(|t| t.len).sum::<u64>()).sum();
    out!(
        "{}: {} ({:.2} MiB; the tensors were {:.2} MiB)",
        target.display(),
        quant.name(),
        bytes.len() as f64 / 1048576.0,
        before as f64 / 1048576.0
    );
    Ok(())
}
