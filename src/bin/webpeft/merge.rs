//! `webpeft merge`: a LoRA or (IA)³ adapter folded into the base weights.

use std::io::Write;
use std::path::Path;

use webpeft::model::source::DirFiles;
use webpeft::model::Model;
use webpeft::peft::adalora::merge::merge_adalora;
use webpeft::peft::adapter::Adapter;
use webpeft::peft::ia3::merge::merge_ia3;
use webpeft::peft::lora::merge::{classifier_config_json, export_safetensors, merge_lora, merge_score_head};
use webpeft::peft::ADAPTER_WEIGHTS_FILE;
use webpeft::peft::BN_WEIGHTS_FILE;
use webpeft::quant::QuantFormat;

use crate::{cli_gpu, load_adapter, write_model_folder};

const MERGE_BOTTLENECK: &str =
    "merge applies to LoRA and (IA)³ adapters; bottleneck adapters cannot be folded into the base weights";

/// `webpeft merge`: base + LoRA or (IA)³ folded into one f32 model folder.
pub async fn merge(dir: &Path, adapter: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let canonical = |p: &Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
    if out.exists() && canonical(out)? == canonical(dir)? {
        return Err("--out must be a different folder from --model".into());
    }
    if !adapter.join(ADAPTER_WEIGHTS_FILE).is_file() && adapter.join(BN_WEIGHTS_FILE).is_file() {
        return Err(format!("{}: {MERGE_BOTTLENECK}", adapter.display()).into());
    }
    let gpu = cli_gpu(webpeft::KernelFamily::Auto, true).await?;
    let files = DirFiles::new(dir)?;
    let mut model = Model::load(&gpu, &files, QuantFormat::F32).await?;
    let mut classifier = None;
    let summary = match load_adapter(&gpu, adapter, &model).await? {
        Adapter::Lora(lora) if lora.config.task_type == webpeft::peft::TaskType::SeqCls => {
            // A reward model or classifier: merged, it is a sequence classifier's folder.
            merge_lora(&gpu, &mut model, &lora)?;
            merge_score_head(&gpu, &mut model, &lora)?;
            classifier = Some(lora.config.num_labels);
            let modules = lora.layers.iter().flatten().filter(|f| f.is_some()).count();
            format!("r {}, {modules} modules and a score head of {} labels", lora.config.r, lora.config.num_labels)
        }
        Adapter::Lora(lora) => {
            merge_lora(&gpu, &mut model, &lora)?;
            let modules = lora.layers.iter().flatten().filter(|f| f.is_some()).count();
            let dora = if lora.config.use_dora { ", DoRA" } else { "" };
            format!("r {}{dora}, {modules} modules", lora.config.r)
        }
        Adapter::AdaLora(ada) => {
            merge_adalora(&gpu, &mut model, &ada)?;
            format!("AdaLoRA, {} modules", ada.modules().len())
        }
        Adapter::Ia3(ia3) => {
            merge_ia3(&gpu, &mut model, &ia3)?;
            format!("(IA)³, {} vectors", ia3.tensors().len())
        }
        Adapter::TrainableTokens(t) => {
            t.tokens.merge_into(&gpu, &model)?;
            if let Some(h) = &t.head {
                h.merge_into(&gpu, &model)?;
            }
            format!("trainable tokens, {} rows", t.tensors().len() * t.tokens.indices.len())
        }
        Adapter::Bottleneck(_) => return Err(format!("{}: {MERGE_BOTTLENECK}", adapter.display()).into()),
        Adapter::PromptTuning(_) | Adapter::PrefixTuning(_) | Adapter::PTuning(_) => {
            return Err(format!(
            "{}: a prompt-, prefix- or P-tuning adapter's virtual tokens are inputs, not weights: it cannot be merged",
            adapter.display()
        )
            .into())
        }
    };
    let bytes = export_safetensors(&gpu, &model).await?;
    write_model_folder(dir, out, &bytes)?;
    if let Some(num_labels) = classifier {
        let tokenizer = webpeft::model::tokenizer::Tokenizer::load(&files).await?;
        let pad = webpeft::train::recipe::pad_id(Some(&tokenizer));
        let config =
            std::fs::read(dir.join("config.json")).map_err(|e| format!("{}/config.json: {e}", dir.display()))?;
        let target = out.join("config.json");
        std::fs::write(&target, classifier_config_json(&config, num_labels, pad)?)
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    let target = out.join("model.safetensors");
    out!(
        "{}: {} merged ({summary}; {:.2} MiB f32)",
        target.display(),
        adapter.display(),
        bytes.len() as f64 / 1048576.0
    );
    Ok(())
}
