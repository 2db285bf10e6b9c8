//! `webpeft score`: what a reward model (a SEQ_CLS LoRA that `train
//! --objective reward` made) thinks of texts, or of the two answers of
//! held-out preference pairs.

use std::io::Write;
use std::path::{Path, PathBuf};

use webpeft::model::config::Config;
use webpeft::model::source::DirFiles;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::train::data::DataOptions;
use webpeft::train::recipe::pad_id;
use webpeft::train::reward::{check_reward_model, reward_dataset, score_sequences, text_ids};

use crate::{cli_gpu, load_adapter, load_model};

pub async fn score(
    dir: &Path,
    base: (QuantFormat, ComputeDtype),
    adapter: Option<&Path>,
    texts: &[String],
    data: Option<&PathBuf>,
) -> Result<(), Box<dyn std::error::Error>> {
    if texts.is_empty() && data.is_none() {
        return Err("nothing to score: give --text (repeatable) or --data pairs.jsonl".into());
    }
    let files = DirFiles::new(dir)?;
    let config = Config::load(&files).await?;
    let tokenizer = Tokenizer::load(&files).await?;
    tokenizer.check_model(&config)?;
    let pad = pad_id(Some(&tokenizer));
    // The pairs first: a bad line fails before the GPU work.
    let pairs = match data {
        Some(path) => {
            let name = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
            let opts = DataOptions {
                seq_len: config.max_position_embeddings,
                packing: false,
                batch_size: 1,
                shuffle: false,
                seed: 0,
                drop_last: false,
            };
            let pairs = reward_dataset(&name, &bytes, Some(&tokenizer), &opts, pad)?;
            for warning in pairs.warnings() {
                eprintln!("warning: {warning}");
            }
            Some(pairs)
        }
        None => None,
    };
    let gpu = cli_gpu(webpeft::KernelFamily::Auto, true).await?;
    let model = load_model(&gpu, &files, base).await?;
    let adapter = match adapter {
        Some(dir) => Some(load_adapter(&gpu, dir, &model).await?),
        None => None,
    };
    check_reward_model(&model, adapter.as_ref(), if adapter.is_some() { "--adapter" } else { "--model" })?;
    let rows = texts.iter().map(|t| text_ids(&tokenizer, "", t)).collect::<Result<Vec<_>, _>>()?;
    for (text, reward) in texts.iter().zip(score_sequences(&gpu, &model, adapter.as_ref(), &rows, pad).await?) {
        out!("{}", serde_json::json!({ "text": text, "reward": reward }));
    }
    if let Some(pairs) = pairs {
        // Rows come two a pair: chosen, rejected.
        let ids: Vec<Vec<u32>> = pairs.rows().iter().map(|r| r.input_ids.clone()).collect();
        let rewards = score_sequences(&gpu, &model, adapter.as_ref(), &ids, pad).await?;
        let mut right = 0;
        for (index, pair) in rewards.chunks(2).enumerate() {
            let (chosen, rejected) = (pair[0], pair[1]);
            right += usize::from(chosen > rejected);
            out!("{}", serde_json::json!({ "pair": index, "chosen": chosen, "rejected": rejected }));
        }
        let n = rewards.len() / 2;
        eprintln!("accuracy {:.4}: the chosen answer scored higher in {right} of {n} pairs", right as f64 / n as f64);
    }
    Ok(())
}
