//! `webpeft logits`: the logits and causal-LM loss of token ids, with or without an adapter.

use std::io::Write;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use webpeft::gpu::Recorder;
use webpeft::model::llama::{causal_lm_loss, CausalTargets};
use webpeft::model::source::DirFiles;
use webpeft::model::Model;
use webpeft::peft::adapter::Adapter;
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::{DType, Gpu, Tensor};

use crate::{cli_gpu, load_adapter, load_model};

/// Token ids from `[[ids…], …]` or `{"input_ids": [[ids…], …]}`.
fn read_token_file(path: &std::path::Path) -> Result<Vec<Vec<u32>>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let rows = match &value {
        serde_json::Value::Object(map) => {
            map.get("input_ids").ok_or_else(|| format!("{}: no `input_ids` field", path.display()))?
        }
        other => other,
    };
    let rows: Vec<Vec<u32>> = serde_json::from_value(rows.clone())
        .map_err(|e| format!("{}: expected a list of lists of token ids: {e}", path.display()))?;
    if rows.is_empty() || rows[0].is_empty() {
        return Err(format!("{}: no token ids", path.display()).into());
    }
    Ok(rows)
}

/// [`Model::logits_and_loss`] with an adapter: logits (B·T·V) and the
/// causal-LM loss with labels = ids, in one submission and one read-back.
async fn adapted_logits_and_loss(
    gpu: &Gpu,
    model: &Model,
    ids: &[Vec<u32>],
    adapter: &Adapter,
) -> webpeft::Result<(Vec<f32>, f32)> {
    let input_ids = model.input_ids(gpu, ids)?; // (B, T)
    let labels: Vec<Vec<i32>> = ids.iter().map(|row| row.iter().map(|&id| id as i32).collect()).collect();
    let targets = CausalTargets::new(gpu, &labels, model.config.vocab_size)?;
    let mut rec = Recorder::new(gpu);
    let (logits, _) = model.forward_adapted(&mut rec, &input_ids, adapter)?; // (B, T, V)
    let loss = causal_lm_loss(&mut rec, &logits, &targets)?; // (1)
    let n = logits.numel();
    let both = Tensor::zeros(gpu, &[n + 1], DType::F32)?;
    rec.copy(&logits, 0, &both, 0, n as u64 * 4)?;
    rec.copy(&loss, 0, &both, n as u64 * 4, 4)?;
    rec.submit()?;
    let mut all = both.to_vec::<f32>(gpu).await?;
    let loss = all.pop().unwrap_or(f32::NAN);
    Ok((all, loss))
}

pub async fn logits(
    dir: &std::path::Path,
    base: (QuantFormat, ComputeDtype),
    tokens: &std::path::Path,
    out: &std::path::Path,
    adapter: Option<&Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    let ids = read_token_file(tokens)?;
    let gpu = cli_gpu(webpeft::KernelFamily::Auto, true).await?;
    let files = DirFiles::new(dir)?;
    let model = load_model(&gpu, &files, base).await?;
    let (logits, loss) = match adapter {
        Some(a) => adapted_logits_and_loss(&gpu, &model, &ids, &load_adapter(&gpu, a, &model).await?).await?,
        None => model.logits_and_loss(&gpu, &ids, None).await?,
    };
    let (b, t, v) = (ids.len(), ids[0].len(), model.config.vocab_size);
    let logits_bytes: &[u8] = bytemuck::cast_slice(&logits);
    let loss_bytes = loss.to_le_bytes();
    let tensors = [
        ("logits", TensorView::new(Dtype::F32, vec![b, t, v], logits_bytes)?),
        ("loss", TensorView::new(Dtype::F32, vec![1], &loss_bytes)?),
    ];
    safetensors::serialize_to_file(tensors, None, out)?;
    out!("{}: logits ({b}, {t}, {v}), loss {loss}", out.display());
    Ok(())
}
