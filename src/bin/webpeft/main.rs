//! The native command-line tool: describe, run, quantize, train and merge
//! models and adapters, and `bench` the kernels on this machine's adapter.
//! This file holds the command line and what the subcommands share; each
//! subcommand's code is in its own file beside it.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

/// `println!` that ends the program quietly when stdout is closed (`| head`)
/// instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod bench;
mod classify;
mod export_gguf;
mod generate;
mod grpo;
mod info;
mod logits;
mod merge;
mod quantize;
mod resume;
mod score;
mod train;

use webpeft::model::llama::GenerationChoices;
use webpeft::model::source::{DirFiles, ModelFiles};
use webpeft::model::Model;
use webpeft::peft::adapter::Adapter;
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::Gpu;

#[derive(Parser)]
#[command(name = "webpeft", version, about = "LoRA and bottleneck-adapter fine-tuning on WebGPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The base model a command runs, and how its weights are held.
#[derive(clap::Args, Debug)]
struct BaseModel {
    /// The model folder (config.json, the safetensors and the tokenizer; the one an adapter was trained on).
    #[arg(long)]
    model: PathBuf,
    /// How the blocks' Linear weights are stored on the GPU: f32, f16, bf16, q8 (Q8_0) or nf4.
    #[arg(long, default_value = "f32")]
    quant: QuantFormat,
    /// Arithmetic of the quantized or f16 Linears: f32, or f16 where the GPU has shader-f16
    /// (bitsandbytes' bnb_4bit_compute_dtype; f32 elsewhere, with a note).
    #[arg(long, default_value = "f32")]
    compute_dtype: ComputeDtype,
}

impl BaseModel {
    fn storage(&self) -> (QuantFormat, ComputeDtype) {
        (self.quant, self.compute_dtype)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming tokens as they come, with the model's own settings
    /// (generation_config.json, as transformers reads it: greedy without one) unless told otherwise.
    Generate {
        /// The model folder (config.json, safetensors, tokenizer.json).
        #[arg(long)]
        model: std::path::PathBuf,
        /// f32, f16, bf16, q8 (Q8_0) or nf4 (a pre-quantized folder loads in its own format).
        #[arg(long, default_value = "f32")]
        quant: QuantFormat,
        /// Arithmetic of the quantized or f16 Linears: f32, or f16 where the GPU has shader-f16
        /// (bitsandbytes' bnb_4bit_compute_dtype; f32 elsewhere, with a note).
        #[arg(long, default_value = "f32")]
        compute_dtype: ComputeDtype,
        #[arg(long)]
        prompt: String,
        /// At most this many new tokens [default: the model's max_new_tokens, else its max_length less
        /// the prompt, else 64]
        #[arg(long)]
        max_new_tokens: Option<usize>,
        /// Sample at this temperature; 0 = greedy [default: the model's]
        #[arg(long)]
        temperature: Option<f32>,
        /// Keep the k most likely tokens when sampling; 0 = off [default: the model's, else 50]
        #[arg(long)]
        top_k: Option<usize>,
        /// Nucleus sampling threshold; 1 = off [default: the model's]
        #[arg(long)]
        top_p: Option<f32>,
        /// Keep the tokens at least this times as likely as the most likely one when sampling; 0 = off
        /// [default: the model's]
        #[arg(long)]
        min_p: Option<f32>,
        /// Typical sampling: keep the tokens whose surprise is nearest the entropy until their probability
        /// reaches this; 1 = off [default: the model's]
        #[arg(long)]
        typical_p: Option<f32>,
        /// Epsilon sampling: drop the tokens less likely than this (never the most likely); 0 = off
        /// [default: the model's]
        #[arg(long)]
        epsilon_cutoff: Option<f32>,
        /// Eta sampling: drop the tokens less likely than min(η, √η·e^(−entropy)); 0 = off [default: the model's]
        #[arg(long)]
        eta_cutoff: Option<f32>,
        /// Divide the logits of tokens already in the text by this (multiply where negative),
        /// greedy or sampled; 1 = off [default: the model's]
        #[arg(long)]
        repetition_penalty: Option<f32>,
        /// No token may complete an n-gram of this size that the text already holds, greedy or
        /// sampled; 0 = off [default: the model's]
        #[arg(long)]
        no_repeat_ngram_size: Option<usize>,
        /// No eos before this many new tokens [default: the model's min_new_tokens, or its
        /// min_length less the prompt]
        #[arg(long)]
        min_new_tokens: Option<usize>,
        /// Stop after the token that completes this text, as transformers' stop_strings (repeat
        /// for several; the text keeps it) [default: the model's stop_strings]
        #[arg(long = "stop", value_name = "TEXT")]
        stop_strings: Vec<String>,
        /// Never generate this text's tokens in a row (its tokenization without special tokens, as
        /// transformers' bad_words_ids; a word inside a sentence usually starts with a space; repeat
        /// for several) [default: the model's bad_words_ids]
        #[arg(long = "bad-word", value_name = "TEXT")]
        bad_words: Vec<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// An adapter folder to apply (PEFT LoRA or AdapterHub bottleneck).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Render the prompt as one user turn with the tokenizer's chat template (the assistant answers).
        #[arg(long)]
        chat: bool,
        /// With --chat: the template's own variables as a JSON object, as apply_chat_template(**kwargs)
        /// passes them, e.g. '{"enable_thinking": false}' for Qwen3
        #[arg(long, value_name = "JSON")]
        chat_template_kwargs: Option<String>,
    },
    /// Write a pre-quantized copy of a model folder (webpeft's layout: see README), ~4-7x smaller.
    Quantize {
        /// The Hugging Face model folder to read.
        #[arg(long)]
        model: std::path::PathBuf,
        /// q8 (Q8_0) or nf4.
        #[arg(long)]
        quant: QuantFormat,
        /// The folder to write (created; config and tokenizer files are copied).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Run the model on token ids and write the logits and the causal-LM loss (labels = ids).
    Logits {
        #[command(flatten)]
        base: BaseModel,
        /// JSON token ids: `[[ids…], …]` or `{"input_ids": [[ids…], …]}` (rows of equal length).
        #[arg(long)]
        tokens: std::path::PathBuf,
        /// Output safetensors file: `logits` (B, T, V) f32 and `loss` (1) f32.
        #[arg(long)]
        out: std::path::PathBuf,
        /// An adapter folder to apply (PEFT LoRA or AdapterHub bottleneck).
        #[arg(long)]
        adapter: Option<PathBuf>,
    },
    /// Score texts with a reward model (`train --objective reward`'s SEQ_CLS LoRA): one JSON line
    /// a text ({"text", "reward"}) or a preference pair ({"pair", "chosen", "rejected"}, then the
    /// accuracy on stderr).
    Score {
        #[command(flatten)]
        base: BaseModel,
        /// The reward model: a PEFT LoRA folder with task_type SEQ_CLS (its score head) [default:
        /// none, --model a …ForSequenceClassification checkpoint of one label].
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// A text to score, repeatable: tokenized as the reward trainer tokenizes an answer (the
        /// tokenizer's special tokens, the eos appended).
        #[arg(long = "text")]
        texts: Vec<String>,
        /// Preference pairs to score, the training data's shape ({"prompt"?, "chosen", "rejected"},
        /// text or messages): each pair's two rewards.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Classify texts with a sequence classifier (`train --objective classification`'s SEQ_CLS
    /// LoRA): one JSON line a text ({"text", "label", "score", "logits"}) or labelled row ({"row",
    /// …, "target"}, then the loss and accuracy on stderr).
    Classify {
        #[command(flatten)]
        base: BaseModel,
        /// The classifier: a PEFT LoRA folder with task_type SEQ_CLS (its score head of num_labels rows)
        /// [default: none, --model a …ForSequenceClassification checkpoint].
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// A text to classify, repeatable: tokenized as the training data (special tokens).
        #[arg(long = "text")]
        texts: Vec<String>,
        /// Labelled rows to classify, the training data's shape ({"text", "label"}).
        #[arg(long)]
        data: Option<PathBuf>,
        /// How the logits are read [default: regression with one label, else single_label_classification].
        #[arg(long, value_parser = ["regression", "single_label_classification", "multi_label_classification"])]
        problem_type: Option<String>,
    },
    /// Train an adapter on a JSONL file: one JSON line per optimizer step on
    /// stdout; the adapter and a resumable training state go to --out.
    Train(Box<train::TrainArgs>),
    /// Fold a LoRA adapter into the base weights and write a plain f32 model folder.
    Merge {
        /// The Hugging Face model folder the adapter was trained on.
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        /// The folder to write: model.safetensors and the config and tokenizer files.
        #[arg(long)]
        out: PathBuf,
    },
    /// The model (base + LoRA folded in), or with --lora-only the adapter alone, as a GGUF file for llama.cpp.
    ExportGguf {
        /// The Hugging Face model folder (with --lora-only only its config.json is read).
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA folder: folded into the weights, or exported alone with --lora-only.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Weight type: f16 or q8_0 (with --lora-only also f32, the converter's default).
        #[arg(long = "type", default_value = "f16")]
        ty: String,
        /// Write the LoRA adapter alone (llama.cpp applies it with --lora).
        #[arg(long)]
        lora_only: bool,
        /// general.name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        /// tokenizer.ggml.pre for a tokenizer llama.cpp's table does not know (llama-bpe, qwen2, smollm, …).
        #[arg(long)]
        tokenizer_pre: Option<String>,
        /// The .gguf file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Describe a Hugging Face model folder: architecture, parameters, bytes per weight format.
    Info {
        /// The model folder (config.json and safetensors).
        #[arg(long)]
        model: std::path::PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks as a table or JSON: matmul GFLOP/s (f32, NF4, Q8_0, each kernel), training
    /// steps (tokens/s, peak GPU bytes), generation (tokens/s) and host peak RSS.
    Bench(bench::BenchArgs),
}

fn main() {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Which train options were typed, not defaulted: a resumed run refuses the
    // typed ones that contradict its checkpoint and takes the rest from it.
    if let (Command::Train(args), Some(("train", sub))) = (&mut cli.command, matches.subcommand()) {
        args.given = sub
            .ids()
            .filter(|id| sub.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect();
    }
    if let Err(e) = pollster::block_on(run(cli)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Info { model, json } => info::info(&model, json).await?,
        Command::Generate {
            model,
            quant,
            compute_dtype,
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            typical_p,
            epsilon_cutoff,
            eta_cutoff,
            repetition_penalty,
            no_repeat_ngram_size,
            min_new_tokens,
            stop_strings,
            bad_words,
            seed,
            adapter,
            chat,
            chat_template_kwargs,
        } => {
            // --temperature 0: greedy.
            let choices = GenerationChoices {
                greedy: (temperature == Some(0.0)).then_some(true),
                temperature: temperature.filter(|&t| t != 0.0),
                top_k,
                top_p,
                min_p,
                typical_p,
                epsilon_cutoff,
                eta_cutoff,
                repetition_penalty,
                no_repeat_ngram_size,
                min_new_tokens,
                seed: Some(seed),
                ..Default::default()
            };
            let settings =
                generate::Settings { max_new_tokens, choices, stop_strings, bad_words, chat_template_kwargs };
            generate::generate(&model, (quant, compute_dtype), &prompt, chat, settings, adapter.as_deref()).await?
        }
        Command::Quantize { model, quant, out } => quantize::quantize(&model, quant, &out).await?,
        Command::Logits { base, tokens, out, adapter } => {
            logits::logits(&base.model, base.storage(), &tokens, &out, adapter.as_deref()).await?
        }
        Command::Score { base, adapter, texts, data } => {
            score::score(&base.model, base.storage(), adapter.as_deref(), &texts, data.as_ref()).await?
        }
        Command::Classify { base, adapter, texts, data, problem_type } => {
            let storage = base.storage();
            classify::classify(&base.model, storage, adapter.as_deref(), &texts, data.as_ref(), problem_type.as_deref())
                .await?
        }
        Command::Train(args) => {
            if train::train(*args).await? == train::Stopped::NonFinite {
                std::process::exit(2);
            }
        }
        Command::Merge { model, adapter, out } => merge::merge(&model, &adapter, &out).await?,
        Command::ExportGguf { model, adapter, ty, lora_only, name, tokenizer_pre, out } => {
            export_gguf::export_gguf(&model, adapter.as_deref(), &ty, lora_only, name, tokenizer_pre, &out).await?
        }
        Command::Bench(args) => bench::run(args).await?,
    }
    Ok(())
}

/// The device, with the autotuner's choices and the compiled pipelines kept
/// in the user's cache folder ($XDG_CACHE_HOME or ~/.cache, then
/// webpeft/tuning.json and webpeft/pipelines/).
pub async fn cli_gpu(kernels: webpeft::KernelFamily, autotune: bool) -> Result<Gpu, webpeft::Error> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("webpeft").join("tuning.json"));
    let pipeline_cache_dir = cache.as_ref().and_then(|c| c.parent()).map(|d| d.join("pipelines"));
    let tuning_cache = cache.filter(|_| autotune);
    Gpu::with_options(webpeft::GpuOptions { kernels, autotune, tuning_cache, pipeline_cache_dir, ..Default::default() })
        .await
}

/// An adapter folder (PEFT or AdapterHub) for `model`; errors name the folder.
pub async fn load_adapter(gpu: &Gpu, dir: &Path, model: &Model) -> Result<Adapter, String> {
    let files = DirFiles::new(dir).map_err(|e| format!("--adapter: {e}"))?;
    Adapter::load(gpu, &files, &model.config).await.map_err(|e| format!("--adapter {}: {e}", dir.display()))
}

/// Load a model folder with its Linears stored as `quant` and computing in
/// `compute`, with a note on stderr where f16 compute does not apply.
pub async fn load_model<F: ModelFiles>(
    gpu: &Gpu,
    files: &F,
    base: (QuantFormat, ComputeDtype),
) -> Result<Model, Box<dyn std::error::Error>> {
    load_model_4bit(gpu, files, base, webpeft::quant::FourBitOptions::default()).await
}

/// [`load_model`] with bitsandbytes' 4-bit options for quantizing to NF4 on load.
pub async fn load_model_4bit<F: ModelFiles>(
    gpu: &Gpu,
    files: &F,
    (quant, compute): (QuantFormat, ComputeDtype),
    four_bit: webpeft::quant::FourBitOptions,
) -> Result<Model, Box<dyn std::error::Error>> {
    let mut model = Model::load_with_options(gpu, files, quant, four_bit, &mut |_| {}).await?;
    let kept = model.weights_not_in_format();
    if let Some((_, format)) = kept.first() {
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        eprintln!(
            "note: {} of the blocks' Linears kept in {format}: their rows are not a multiple of {quant}'s blocks of 32 \
             (as llama.cpp does): {}",
            kept.len(),
            names.join(", ")
        );
    }
    if let Some(asked) = model.config.bnb_compute_dtype().filter(|&d| d != compute) {
        eprintln!(
            "note: this folder was quantized with bnb_4bit_compute_dtype={}; pass --compute-dtype {asked} to compute so",
            model.config.bnb_4bit_compute_dtype.as_deref().unwrap_or_default()
        );
    }
    let effective = model.set_compute_dtype(gpu, compute)?;
    if effective != compute {
        let why = if model.format == QuantFormat::F32 { "an f32 base" } else { "this GPU has no shader-f16" };
        eprintln!("note: computing in {effective}, not {compute}: {why}");
    } else if effective == ComputeDtype::F16 && gpu.info().device_type == "Cpu" {
        eprintln!("note: {} emulates f16 arithmetic; f32 is faster on it", gpu.info().name);
    }
    Ok(model)
}

/// Files of a model folder that travel unchanged with its weights.
pub const COMPANION_FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Writes `model.safetensors` into `out` and copies the config and tokenizer
/// files from the model folder `dir`.
pub fn write_model_folder(dir: &Path, out: &Path, model_safetensors: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let target = out.join("model.safetensors");
    std::fs::write(&target, model_safetensors).map_err(|e| format!("{}: {e}", target.display()))?;
    for name in COMPANION_FILES {
        let src = dir.join(name);
        if src.is_file() {
            std::fs::copy(&src, out.join(name)).map_err(|e| format!("{}: {e}", src.display()))?;
        }
    }
    Ok(())
}
