//! `webpeft classify`: what a sequence classifier (a SEQ_CLS LoRA that
//! `train --objective classification` made) makes of texts, or of labelled
//! held-out rows (then also the loss and accuracy, as `Trainer.evaluate()`).

use std::io::Write;
use std::path::{Path, PathBuf};

use webpeft::model::config::Config;
use webpeft::model::config::ModelHead;
use webpeft::model::source::DirFiles;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::train::classification::{
    classification_dataset, classifier_labels, classify_texts, evaluate_classification, predictions,
    ClassificationLoss, ProblemType,
};
use webpeft::train::data::DataOptions;
use webpeft::train::recipe::pad_id;
use webpeft::train::reward::score_sequences;

use crate::{cli_gpu, load_adapter, load_model};

pub async fn classify(
    dir: &Path,
    base: (QuantFormat, ComputeDtype),
    adapter: Option<&Path>,
    texts: &[String],
    data: Option<&PathBuf>,
    problem_type: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    if texts.is_empty() && data.is_none() {
        return Err("nothing to classify: give --text (repeatable) or --data texts.jsonl".into());
    }
    let problem_type = problem_type.and_then(ProblemType::from_name);
    let files = DirFiles::new(dir)?;
    let config = Config::load(&files).await?;
    let tokenizer = Tokenizer::load(&files).await?;
    tokenizer.check_model(&config)?;
    let gpu = cli_gpu(webpeft::KernelFamily::Auto, true).await?;
    let model = load_model(&gpu, &files, base).await?;
    let adapter = match adapter {
        Some(dir) => Some(load_adapter(&gpu, dir, &model).await?),
        None => None,
    };
    let labels = classifier_labels(&model, adapter.as_ref())?;
    let problem_type = problem_type.or(match model.config.head {
        ModelHead::SequenceClassification { problem_type, .. } => problem_type,
        ModelHead::CausalLm => None,
    });
    let loss = ClassificationLoss { num_labels: labels, problem_type, pad_token_id: pad_id(Some(&tokenizer)) };
    loss.validate()?;
    let max = config.max_position_embeddings;
    let verdicts = classify_texts((&gpu, &model, adapter.as_ref()), &tokenizer, texts, problem_type, max).await?;
    for (text, p) in texts.iter().zip(verdicts) {
        out!("{}", serde_json::json!({ "text": text, "label": p.label, "score": p.score, "logits": p.logits }));
    }
    if let Some(path) = data {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
        let opts =
            DataOptions { seq_len: max, packing: false, batch_size: 8, shuffle: false, seed: 0, drop_last: false };
        let rows = classification_dataset(&name, &bytes, Some(&tokenizer), &opts, &loss)?;
        let batches = rows.epoch(0);
        let per_row = batches[0].targets.as_ref().and_then(|t| t.first()).map_or(1, Vec::len);
        let problem = loss.problem(per_row);
        let ids: Vec<Vec<u32>> = rows.rows().iter().map(|r| r.input_ids.clone()).collect();
        let logits = score_sequences(&gpu, &model, adapter.as_ref(), &ids, loss.pad_token_id).await?;
        let targets = batches.iter().flat_map(|b| b.targets.clone().unwrap_or_default());
        for (row, (p, target)) in predictions(&logits, labels, problem).into_iter().zip(targets).enumerate() {
            let target = match (problem, target.as_slice()) {
                (ProblemType::SingleLabelClassification, [class]) => serde_json::json!(*class as i64),
                (_, [value]) => serde_json::json!(value),
                _ => serde_json::json!(target),
            };
            out!(
                "{}",
                serde_json::json!({ "row": row, "label": p.label, "score": p.score, "logits": p.logits, "target": target })
            );
        }
        let e = evaluate_classification(&gpu, &model, adapter.as_ref(), &batches, &loss).await?;
        let accuracy = e.accuracy.map_or(String::new(), |a| format!(", accuracy {a:.4}"));
        eprintln!("{} ({} rows): loss {:.6}{accuracy}", problem.name(), e.rows, e.loss);
    }
    Ok(())
}
