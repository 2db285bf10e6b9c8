//! The native command-line tool: describe, run, quantize, train and merge
//! models and adapters, and `bench` the kernels on this machine's adapter.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[path = "webpeft/resume.rs"]
mod resume;

/// `println!` that ends the program quietly when stdout is closed (`| head`)
/// instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use webpeft::bench::generate::{generate_figure, host_peak_rss_bytes, GenerateFigure};
use webpeft::bench::train::{train_figure_on, StepSetup, TrainFigure};
use webpeft::bench::{kernel_figures, Figure};
use webpeft::gpu::Recorder;
use webpeft::kernels::blocked::{is_real_gpu, Blocks};
use webpeft::kernels::matmul::{SgTiles, Tiles};
use webpeft::kernels::swiglu::Activation;
use webpeft::model::checkpoint::Checkpoint;
use webpeft::model::config::Config;
use webpeft::model::llama::{causal_lm_loss, CausalTargets, GenerationConfig};
use webpeft::model::source::{DirFiles, ModelFiles};
use webpeft::model::tokenizer::Tokenizer;
use webpeft::model::Model;
use webpeft::peft::adapter::Adapter;
use webpeft::peft::bottleneck_file::BN_WEIGHTS_FILE;
use webpeft::peft::merge::{export_safetensors, merge_lora};
use webpeft::peft::{TargetModules, ADAPTER_WEIGHTS_FILE};
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::train::checkpoint::{load_checkpoint, read_checkpoint, save_checkpoint, CHECKPOINT_FILE};
use webpeft::train::data::{DataOptions, Dataset};
use webpeft::train::recipe::{AdapterRecipe, Method, TrainRecipe, DEFAULT_SEED};
use webpeft::train::run::{Run, RunConfig};
use webpeft::train::schedule::Schedule;
use webpeft::{DType, Gpu, Tensor};

#[derive(Parser)]
#[command(name = "webpeft", version, about = "LoRA and bottleneck-adapter fine-tuning on WebGPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming tokens as they come (greedy unless --temperature > 0).
    Generate {
        /// The model folder (config.json, safetensors, tokenizer.json).
        #[arg(long)]
        model: std::path::PathBuf,
        /// f32, f16, q8 (Q8_0) or nf4 (a pre-quantized folder loads in its own format).
        #[arg(long, default_value = "f32")]
        quant: QuantFormat,
        /// Arithmetic of the quantized or f16 Linears: f32, or f16 where the GPU has shader-f16
        /// (bitsandbytes' bnb_4bit_compute_dtype; f32 elsewhere, with a note).
        #[arg(long, default_value = "f32")]
        compute_dtype: ComputeDtype,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy; otherwise sample at this temperature.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Keep the k most likely tokens when sampling (0 = off).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Nucleus sampling threshold (1 = off).
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// An adapter folder to apply (PEFT LoRA or AdapterHub bottleneck).
        #[arg(long)]
        adapter: Option<PathBuf>,
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
        /// The model folder (config.json and safetensors).
        #[arg(long)]
        model: std::path::PathBuf,
        /// How the blocks' Linear weights are stored on the GPU: f32, f16, q8 (Q8_0) or nf4.
        #[arg(long, default_value = "f32")]
        quant: QuantFormat,
        /// Arithmetic of the quantized or f16 Linears: f32, or f16 where the GPU has shader-f16
        /// (bitsandbytes' bnb_4bit_compute_dtype; f32 elsewhere, with a note).
        #[arg(long, default_value = "f32")]
        compute_dtype: ComputeDtype,
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
    /// Train an adapter on a JSONL file: one JSON line per optimizer step on
    /// stdout; the adapter and a resumable training state go to --out.
    Train(Box<TrainArgs>),
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
    Bench {
        /// Repeats per figure; the median is printed.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Skip the naive yardstick kernels (they are slow).
        #[arg(long)]
        no_naive: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Outputs per invocation and workgroup shape for the f32 kernel, "TMxTN/WXxWY".
        #[arg(long)]
        tiles: Option<String>,
        /// Only time the f32 kernel at 1024³ and the projections, for each
        /// tile shape in this comma-separated list (tuning aid).
        #[arg(long)]
        sweep: Option<String>,
        /// Like --sweep for the subgroup kernels: a comma-separated list of
        /// "SRxTN" (rows per subgroup x columns per lane).
        #[arg(long)]
        sweep_sg: Option<String>,
        /// Only time the blocked kernel of real GPUs for each block shape in
        /// this comma-separated list of "BMxBNxBK/TMxTN" (tuning aid).
        #[arg(long)]
        sweep_blocks: Option<String>,
        /// The matmul kernels: auto (by the adapter: CPU rasterizers get
        /// their own), cpu, or gpu (the real-GPU kernels anywhere).
        #[arg(long, default_value = "auto")]
        kernel_family: webpeft::KernelFamily,
        /// Use the fallback table's blocks: no autotuning, no tuning cache.
        #[arg(long)]
        no_autotune: bool,
        /// Only time training steps and generation (no kernels): LoRA r 16 on
        /// all seven projections and seq_bn, on f32 and NF4 bases.
        #[arg(long)]
        train: bool,
        /// Only time the matmul kernels (no training or generation).
        #[arg(long, conflicts_with = "train")]
        kernels: bool,
        /// The model folder to train and generate with; without it, two random
        /// models: a tiny one (the fixtures' shape) and a ~29M-parameter one.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Arithmetic of the NF4 base's Linears in the training and generation
        /// figures: f32, or f16 where the GPU has shader-f16 (then only the NF4
        /// base is timed: an f32 base computes in f32 either way).
        #[arg(long, default_value = "f32")]
        compute_dtype: ComputeDtype,
        /// Rows per training step.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Tokens per row.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// LoRA's rank for the training figures (alpha is 2r).
        #[arg(long, default_value_t = 16)]
        r: usize,
        /// Train with gradient checkpointing.
        #[arg(long)]
        gradient_checkpointing: bool,
        /// After each training figure, profile one more step with timestamp
        /// queries and print GPU time per kernel; after each generation
        /// figure, the same for one decoding step.
        #[arg(long)]
        profile: bool,
        /// Instead of everything else: plan, load and train one step of a
        /// Llama-3.2-1B-shaped model (random weights, NF4, LoRA r 16 on all
        /// linears, 1×512, gradient checkpointing), printing plan vs. measured.
        #[arg(long)]
        llama_1b: bool,
    },
}

/// `webpeft train`'s options, parsed into the library's recipe
/// (`webpeft::train::recipe`), whose defaults these are. Adapter options left
/// out take the method's defaults; with --init-adapter or --resume the
/// adapter's own config wins.
#[derive(clap::Args)]
struct TrainArgs {
    /// The model folder (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Training data, one JSON object a line: {"text"}, {"prompt", "completion"},
    /// {"messages"} or {"input_ids", "labels"} [with --resume: the checkpoint's].
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// lora, seq_bn, double_seq_bn or par_bn [with --resume: the checkpoint's].
    #[arg(long, value_parser = parse_method, required_unless_present = "resume")]
    method: Option<Method>,
    /// LoRA rank [default: 8, as PEFT].
    #[arg(long)]
    r: Option<usize>,
    /// LoRA alpha: the LoRA term is scaled by alpha/r [default: 8, as PEFT].
    #[arg(long)]
    alpha: Option<f64>,
    /// Dropout on the adapter's input, in [0, 1) [default: 0].
    #[arg(long)]
    dropout: Option<f64>,
    /// LoRA targets: comma-separated module names, or all-linear [default: q_proj,v_proj].
    #[arg(long)]
    targets: Option<String>,
    /// LoRA scaling alpha/√r instead of alpha/r.
    #[arg(long)]
    rslora: bool,
    /// Bottleneck width = hidden_size / this [default: AdapterHub's preset].
    #[arg(long)]
    reduction_factor: Option<f64>,
    /// Bottleneck activation: relu, silu, gelu or tanh [default: AdapterHub's preset].
    #[arg(long, value_parser = parse_activation)]
    non_linearity: Option<Activation>,
    /// How the frozen blocks' Linear weights are stored: f32, f16, q8 (Q8_0) or nf4.
    #[arg(long, default_value = "f32")]
    quant: QuantFormat,
    /// Arithmetic of the quantized or f16 Linears: f32, or f16 where the GPU has shader-f16
    /// (bitsandbytes' bnb_4bit_compute_dtype; f32 elsewhere, with a note).
    #[arg(long, default_value = "f32")]
    compute_dtype: ComputeDtype,
    /// Start from this adapter folder (PEFT LoRA or AdapterHub bottleneck) instead of a fresh one.
    #[arg(long, conflicts_with = "resume")]
    init_adapter: Option<PathBuf>,
    /// Optimizer steps in the whole run.
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<u64>,
    /// Passes over the data (may be fractional) [default: 1 when --steps is not given].
    #[arg(long)]
    epochs: Option<f64>,
    /// Peak learning rate (required unless --resume).
    #[arg(long, required_unless_present = "resume")]
    lr: Option<f64>,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = TrainRecipe::default().batch_size)]
    batch_size: usize,
    /// Tokens per row [default: 512, capped at the model's max_position_embeddings].
    #[arg(long)]
    seq_len: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = TrainRecipe::default().grad_accum)]
    grad_accum: usize,
    /// Steps of linear warmup from 0.
    #[arg(long, default_value_t = TrainRecipe::default().warmup_steps)]
    warmup: u64,
    /// constant, linear or cosine.
    #[arg(long, default_value = TrainRecipe::default().schedule.name(), value_parser = parse_schedule)]
    schedule: Schedule,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = TrainRecipe::default().optimizer.weight_decay)]
    weight_decay: f64,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = TrainRecipe::default().optimizer.max_grad_norm)]
    max_grad_norm: f32,
    /// Recompute each layer's activations in the backward instead of keeping
    /// them: far less memory, about a third more time, the same gradients.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Keep the file's row order in every epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Concatenate the examples and cut rows of exactly --seq-len tokens.
    #[arg(long)]
    packing: bool,
    /// Seeds the adapter's initialisation, the shuffling and the dropout.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Held-out JSONL file: its loss and perplexity are printed after training.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Continue the run saved in this folder's training_state.safetensors:
    /// the same schedule, step total, learning rate and accumulation as when it
    /// started (those flags are then ignored), from the saved data position.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this many steps of this invocation, writing the adapter and
    /// the checkpoint as at the end (continue later with --resume).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Also write the adapter and the checkpoint every this many steps.
    #[arg(long)]
    save_steps: Option<u64>,
    /// The folder to write the adapter files and training_state.safetensors to.
    #[arg(long)]
    out: PathBuf,
    /// The options given on the command line, not defaulted (clap ids).
    #[arg(skip)]
    given: std::collections::BTreeSet<String>,
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_name(s).map_err(|_| "expected lora, seq_bn, double_seq_bn or par_bn".to_string())
}

fn parse_activation(s: &str) -> Result<Activation, String> {
    Activation::from_name(s).ok_or_else(|| "expected relu, silu, gelu or tanh".to_string())
}

fn parse_schedule(s: &str) -> Result<Schedule, String> {
    Schedule::from_name(s).map_err(|_| "expected constant, linear or cosine".to_string())
}

fn parse_tiles(s: &str) -> Result<Tiles, String> {
    let bad = || format!("--tiles wants TMxTN/WXxWY such as 8x8/8x8, got {s:?}");
    let (t, w) = s.split_once('/').ok_or_else(bad)?;
    let (tm, tn) = t.split_once('x').ok_or_else(bad)?;
    let (wx, wy) = w.split_once('x').ok_or_else(bad)?;
    let n = |v: &str| v.parse::<u32>().map_err(|_| bad());
    Ok(Tiles { tm: n(tm)?, tn: n(tn)?, wx: n(wx)?, wy: n(wy)? })
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
        Command::Info { model, json } => info(&model, json).await?,
        Command::Generate {
            model,
            quant,
            compute_dtype,
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            adapter,
        } => {
            let sampling = GenerationConfig {
                max_new_tokens,
                temperature: if temperature > 0.0 { temperature } else { 1.0 },
                top_k,
                top_p,
                seed,
                eos_token_ids: Vec::new(),
                greedy: temperature <= 0.0,
            };
            generate(&model, (quant, compute_dtype), &prompt, sampling, adapter.as_deref()).await?
        }
        Command::Quantize { model, quant, out } => quantize(&model, quant, &out).await?,
        Command::Logits { model, quant, compute_dtype, tokens, out, adapter } => {
            logits(&model, (quant, compute_dtype), &tokens, &out, adapter.as_deref()).await?
        }
        Command::Train(args) => {
            if train(*args).await? == Stopped::NonFinite {
                std::process::exit(2);
            }
        }
        Command::Merge { model, adapter, out } => merge(&model, &adapter, &out).await?,
        Command::Bench {
            repeats,
            no_naive,
            json,
            tiles,
            sweep,
            sweep_sg,
            sweep_blocks,
            kernel_family,
            no_autotune,
            train,
            kernels,
            model,
            compute_dtype,
            batch,
            seq,
            r,
            gradient_checkpointing,
            profile,
            llama_1b,
        } => {
            let tiles = tiles.as_deref().map(parse_tiles).transpose()?;
            let gpu = cli_gpu(kernel_family, !no_autotune).await?;
            if llama_1b {
                return bench_llama_1b(&gpu, json).await;
            }
            if batch == 0 || seq < 2 {
                return Err(
                    format!("bench: --batch must be at least 1 and --seq at least 2 (got {batch} and {seq})").into()
                );
            }
            let steps = StepsBench {
                model,
                compute: compute_dtype,
                batch,
                seq,
                r,
                checkpointing: gradient_checkpointing,
                profile,
                repeats: repeats.max(1),
            };
            if train {
                let (train, generate) = bench_train(&gpu, &steps, json).await?;
                if json {
                    let out = serde_json::json!({
                        "adapter": gpu.info(), "train": train, "generate": generate,
                        "host_peak_rss_bytes": host_peak_rss_bytes(),
                    });
                    out!("{}", serde_json::to_string_pretty(&out)?);
                }
                return Ok(());
            }
            if let Some(list) = sweep_blocks {
                let blocks = list.split(',').map(parse_blocks).collect::<Result<Vec<_>, _>>()?;
                print_header(&gpu);
                webpeft::bench::gpu::sweep_blocks(&gpu, &blocks, repeats.max(1), &mut |f| print_row(f)).await?;
                return Ok(());
            }
            if let Some(list) = sweep_sg {
                for t in list.split(',') {
                    let bad = || format!("--sweep-sg wants SRxTN such as 64x16, got {t:?}");
                    let (sr, tn) = t.split_once('x').ok_or_else(bad)?;
                    let tiles = SgTiles { sr: sr.parse().map_err(|_| bad())?, tn: tn.parse().map_err(|_| bad())? };
                    if tiles.sr == 0 || tiles.sr % 32 != 0 || tiles.tn == 0 || tiles.tn % 4 != 0 {
                        return Err(
                            format!("--sweep-sg: rows must be a multiple of 32 and columns of 4, got {t:?}").into()
                        );
                    }
                    let figures = webpeft::bench::sweep_subgroup(&gpu, tiles, repeats.max(1)).await?;
                    figures.iter().for_each(print_row);
                }
                return Ok(());
            }
            if let Some(list) = sweep {
                for t in list.split(',') {
                    let figures = webpeft::bench::sweep_tiles(&gpu, parse_tiles(t)?, repeats.max(1)).await?;
                    figures.iter().for_each(print_row);
                }
                return Ok(());
            }
            if !json {
                print_header(&gpu);
            }
            let mut row = |f: &Figure| {
                if !json {
                    print_row(f);
                }
            };
            let mut figures = kernel_figures(&gpu, repeats.max(1), tiles, !no_naive, &mut row).await?;
            // The big shapes and the bandwidth-bound ones, where a GPU can run them.
            let copy_gbps = if is_real_gpu(&gpu) {
                let copy = webpeft::bench::gpu::copy_gbps(&gpu, repeats.max(1)).await?;
                if !json {
                    out!("device copy: {copy:.0} GB/s (read + write); weight GB/s below is read only, then its share of the copy rate");
                }
                // Rows through a weight also say how much of the copy bandwidth they reach (the GEMV's bound).
                let mut gpu_row = |f: &Figure| {
                    if !json {
                        print_row(f);
                        if let (Some(g), 1) = (f.weight_gbps, f.m) {
                            out!("{:>100} {:>9.1}% of copy", "", 100.0 * g / copy);
                        }
                    }
                };
                figures.extend(webpeft::bench::gpu::gpu_figures(&gpu, repeats.max(1), &mut gpu_row).await?);
                Some(copy)
            } else {
                None
            };
            let (train, generate) =
                if kernels { (Vec::new(), Vec::new()) } else { bench_train(&gpu, &steps, json).await? };
            if json {
                let out = serde_json::json!({
                    "adapter": gpu.info(), "copy_gbps": copy_gbps, "matmul": figures, "train": train, "generate": generate,
                    "host_peak_rss_bytes": host_peak_rss_bytes(),
                });
                out!("{}", serde_json::to_string_pretty(&out)?);
            } else if let Some(rss) = host_peak_rss_bytes() {
                out!("host peak RSS: {:.1} MiB", rss as f64 / (1 << 20) as f64);
            }
        }
    }
    Ok(())
}

/// The device, with the autotuner's choices and the compiled pipelines kept
/// in the user's cache folder ($XDG_CACHE_HOME or ~/.cache, then
/// webpeft/tuning.json and webpeft/pipelines/).
async fn cli_gpu(kernels: webpeft::KernelFamily, autotune: bool) -> Result<Gpu, webpeft::Error> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("webpeft").join("tuning.json"));
    let pipeline_cache_dir = cache.as_ref().and_then(|c| c.parent()).map(|d| d.join("pipelines"));
    let tuning_cache = cache.filter(|_| autotune);
    Gpu::with_options(webpeft::GpuOptions { kernels, autotune, tuning_cache, pipeline_cache_dir, ..Default::default() })
        .await
}

fn print_header(gpu: &Gpu) {
    out!("adapter: {}, {:?} kernels", gpu.describe(), gpu.kernel_family());
    out!("{:<32} {:<44} {:>10} {:>12} {:>10}", "kernel", "shape", "GFLOP/s", "ms/call", "weight GB/s");
}

fn print_row(f: &Figure) {
    let gbps = f.weight_gbps.map(|g| format!("{g:>10.1}")).unwrap_or_default();
    out!("{:<32} {:<44} {:>10.2} {:>12.3} {gbps}", f.kernel, f.shape, f.gflops, f.ms_per_call);
}

fn parse_blocks(s: &str) -> Result<Blocks, String> {
    let bad = || format!("--sweep-blocks wants BMxBNxBK/TMxTN such as 128x128x8/8x8, got {s:?}");
    let (b, t) = s.split_once('/').ok_or_else(bad)?;
    let n = |v: &str| v.parse::<u32>().map_err(|_| bad());
    let b: Vec<u32> = b.split('x').map(n).collect::<Result<_, _>>()?;
    let t: Vec<u32> = t.split('x').map(n).collect::<Result<_, _>>()?;
    match (b.as_slice(), t.as_slice()) {
        ([bm, bn, bk], [tm, tn]) => Ok(Blocks { bm: *bm, bn: *bn, bk: *bk, tm: *tm, tn: *tn }),
        _ => Err(bad()),
    }
}

async fn info(dir: &std::path::Path, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let files = DirFiles::new(dir)?;
    let config = Config::load(&files).await?;
    let checkpoint = Checkpoint::open_for(&files, &config).await?;
    let formats = [QuantFormat::F32, QuantFormat::Q8_0, QuantFormat::Nf4];
    let bytes: Vec<(&str, u64)> =
        formats.iter().map(|f| (f.name(), webpeft::train::plan::weight_bytes(&config, *f))).collect();
    if json {
        let out = serde_json::json!({
            "model_type": config.model_type.name(),
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            "vocab_size": config.vocab_size,
            "max_position_embeddings": config.max_position_embeddings,
            "tie_word_embeddings": config.tie_word_embeddings,
            "parameters": config.parameter_count(),
            "tensors": checkpoint.names().count(),
            "weight_bytes": bytes.iter().map(|(n, b)| (n.to_string(), *b)).collect::<std::collections::BTreeMap<_, _>>(),
        });
        out!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    out!("model:        {}", dir.display());
    out!(
        "architecture: {} ({} layers, hidden {}, intermediate {})",
        config.model_type.name(),
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size
    );
    out!(
        "attention:    {} heads, {} kv heads, head_dim {}",
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim
    );
    out!("vocabulary:   {} (tied embeddings: {})", config.vocab_size, config.tie_word_embeddings);
    out!("context:      {} positions, rope_theta {}", config.max_position_embeddings, config.rope_theta);
    out!("parameters:   {} in {} tensors", config.parameter_count(), checkpoint.names().count());
    for (name, b) in bytes {
        out!("weights {:<5} {:>8.2} MiB  (block Linears in {name}, the rest f32)", name, b as f64 / (1024.0 * 1024.0));
    }
    Ok(())
}

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

/// An adapter folder (PEFT or AdapterHub) for `model`; errors name the folder.
async fn load_adapter(gpu: &Gpu, dir: &Path, model: &Model) -> Result<Adapter, String> {
    let files = DirFiles::new(dir).map_err(|e| format!("--adapter: {e}"))?;
    Adapter::load(gpu, &files, &model.config).await.map_err(|e| format!("--adapter {}: {e}", dir.display()))
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
    let (logits, _) = model.forward_adapted(&mut rec, &input_ids, Some(adapter), None)?; // (B, T, V)
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

async fn logits(
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

/// Load a model folder with its Linears stored as `quant` and computing in
/// `compute`, with a note on stderr where f16 compute does not apply.
async fn load_model<F: ModelFiles>(
    gpu: &Gpu,
    files: &F,
    (quant, compute): (QuantFormat, ComputeDtype),
) -> Result<Model, Box<dyn std::error::Error>> {
    let mut model = Model::load(gpu, files, quant).await?;
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
const COMPANION_FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

async fn quantize(
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

async fn generate(
    dir: &std::path::Path,
    base: (QuantFormat, ComputeDtype),
    prompt: &str,
    mut config: GenerationConfig,
    adapter: Option<&Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    let gpu = cli_gpu(webpeft::KernelFamily::Auto, true).await?;
    let files = DirFiles::new(dir)?;
    let tokenizer = Tokenizer::load(&files).await?;
    tokenizer.check_model(&Config::load(&files).await?)?;
    let model = load_model(&gpu, &files, base).await?;
    let adapter = match adapter {
        Some(a) => Some(load_adapter(&gpu, a, &model).await?),
        None => None,
    };
    config.eos_token_ids = model.config.eos_token_ids.clone();
    config.eos_token_ids.extend(tokenizer.eos_ids());
    let ids = tokenizer.encode(prompt, true)?;
    let mut decoder = tokenizer.stream_decoder(true);
    let mut stdout = std::io::stdout();
    let mut failed = None;
    let start = std::time::Instant::now();
    let out = model
        .generate_adapted(&gpu, &ids, &config, adapter.as_ref(), |id| match decoder.step(id) {
            Ok(Some(piece)) => {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
                true
            }
            Ok(None) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        })
        .await?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    out!("{}", decoder.flush()?);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} tokens in {:.2} s ({:.1} tokens/s, prompt {} tokens)",
        out.len(),
        secs,
        out.len() as f64 / secs,
        ids.len()
    );
    Ok(())
}

/// One `train` line per optimizer step (f32 fields print as f32).
#[derive(serde::Serialize)]
struct StepLine {
    step: u64,
    loss: f32,
    lr: f64,
    grad_norm: f32,
    tokens_per_s: f64,
}

/// The `train` line after the run when --eval-data is given.
#[derive(serde::Serialize)]
struct EvalLine {
    eval_loss: f32,
    eval_perplexity: f64,
    eval_tokens: usize,
}

/// A library error about an adapter option, reworded for the flag that set it
/// (`adapter_config.json: field r: …` → `--r: …`).
fn flag_error(e: webpeft::Error) -> String {
    let (field, detail) = match &e {
        webpeft::Error::AdapterConfig { field, detail }
        | webpeft::Error::AdapterUnsupported { field, detail }
        | webpeft::Error::BottleneckConfig { field, detail } => (field.as_str(), detail),
        // The recipe's names are the flags' with underscores.
        webpeft::Error::TrainOption { option, detail } => {
            return match *option {
                "warmup_steps" => format!("--warmup: {detail}"),
                "beta1" | "beta2" | "eps" => e.to_string(),
                o => format!("--{}: {detail}", o.replace('_', "-")),
            }
        }
        _ => return e.to_string(),
    };
    let flag = match field.strip_prefix("config.").unwrap_or(field) {
        "r" => "--r",
        "lora_alpha" => "--alpha",
        "lora_dropout" | "dropout" => "--dropout",
        "target_modules" => "--targets",
        "reduction_factor" => "--reduction-factor",
        "non_linearity" => "--non-linearity",
        _ => return e.to_string(),
    };
    format!("{flag}: {detail}")
}

/// The folder's own name (`base_model_name_or_path` / `model_name`).
fn model_name(dir: &Path) -> Option<String> {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(dir).or_else(|| std::fs::canonicalize(dir).ok().as_deref().and_then(named))
}

impl TrainArgs {
    /// The adapter options given on the command line.
    fn adapter_flags(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        let lora = [
            ("--r", self.r.is_some()),
            ("--alpha", self.alpha.is_some()),
            ("--targets", self.targets.is_some()),
            ("--rslora", self.rslora),
        ];
        let bn = [
            ("--reduction-factor", self.reduction_factor.is_some()),
            ("--non-linearity", self.non_linearity.is_some()),
        ];
        let given = |flags: &[(&'static str, bool)]| flags.iter().filter(|f| f.1).map(|f| f.0).collect::<Vec<_>>();
        (given(&lora), given(&bn))
    }

    /// The method (clap requires it unless --resume, which sets it).
    fn method(&self) -> Method {
        self.method.unwrap_or(Method::Lora)
    }

    /// Options that belong to the other kind of adapter are a mistake.
    fn check_method_options(&self) -> Result<(), String> {
        let (lora, bn) = self.adapter_flags();
        let options = |flags: &[&str]| match flags {
            [one] => format!("{one} is an option"),
            many => format!("{} are options", many.join(", ")),
        };
        match self.method() {
            Method::Lora if !bn.is_empty() => Err(format!(
                "{} for bottleneck adapters; --method lora takes --r, --alpha, --dropout, --targets and --rslora",
                options(&bn)
            )),
            Method::Bottleneck(kind) if !lora.is_empty() => Err(format!(
                "{} for LoRA; --method {} takes --reduction-factor, --non-linearity and --dropout",
                options(&lora),
                kind.name()
            )),
            _ => Ok(()),
        }
    }

    /// The adapter the command line's options describe (the rest at the recipe's defaults).
    fn adapter_recipe(&self) -> AdapterRecipe {
        let mut recipe = AdapterRecipe::new(self.method());
        match &mut recipe {
            AdapterRecipe::Lora(l) => {
                l.r = self.r.unwrap_or(l.r);
                l.alpha = self.alpha.unwrap_or(l.alpha);
                l.dropout = self.dropout.unwrap_or(l.dropout);
                if let Some(t) = self.targets.as_deref() {
                    l.targets = match t {
                        "all-linear" => TargetModules::AllLinear,
                        list => TargetModules::List(
                            list.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
                        ),
                    };
                }
                l.use_rslora = self.rslora;
            }
            AdapterRecipe::Bottleneck(b) => {
                b.reduction_factor = self.reduction_factor.unwrap_or(b.reduction_factor);
                b.non_linearity = self.non_linearity.unwrap_or(b.non_linearity);
                b.dropout = self.dropout.unwrap_or(b.dropout);
            }
        }
        recipe
    }

    /// How to train, from the command line's options (the rest at the recipe's defaults).
    fn train_recipe(&self) -> TrainRecipe {
        let mut t = TrainRecipe::default();
        t.lr = self.lr.unwrap_or(t.lr);
        t.schedule = self.schedule;
        t.warmup_steps = self.warmup;
        t.steps = self.steps;
        t.epochs = self.epochs.unwrap_or(t.epochs);
        t.grad_accum = self.grad_accum;
        t.optimizer.weight_decay = self.weight_decay;
        t.optimizer.max_grad_norm = self.max_grad_norm;
        t.batch_size = self.batch_size;
        t.seq_len = self.seq_len.unwrap_or(t.seq_len);
        t.packing = self.packing;
        t.shuffle = !self.no_shuffle;
        t.seed = self.seed;
        t.gradient_checkpointing = self.gradient_checkpointing;
        t
    }

    /// A fresh adapter from the command line's options.
    fn new_adapter(&self, gpu: &Gpu, model: &Model) -> Result<Adapter, String> {
        self.adapter_recipe().build(gpu, &model.config, model_name(&self.model), self.seed).map_err(flag_error)
    }

    /// Says on stderr which given adapter options `source`'s config overrides.
    fn note_ignored_options(&self, source: &str) {
        let (mut given, bn) = self.adapter_flags();
        given.extend(bn);
        if self.dropout.is_some() {
            given.push("--dropout");
        }
        if !given.is_empty() {
            eprintln!("note: {} ignored: the adapter config in {source} wins", given.join(", "));
        }
    }
}

/// A JSONL file's examples as rows, named by the file's path in errors.
fn read_dataset(
    recipe: &TrainRecipe,
    path: &Path,
    tokenizer: &Tokenizer,
    opts: &DataOptions,
) -> Result<Dataset, Box<dyn std::error::Error>> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
    Ok(recipe.dataset(&name, &bytes, Some(tokenizer), opts)?)
}

/// Writes the adapter files and the training state of `run` into `out`.
async fn save_run(
    gpu: &Gpu,
    run: &Run,
    model: &Model,
    out: &Path,
    options: &serde_json::Value,
) -> Result<(), Box<dyn std::error::Error>> {
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    };
    for (name, bytes) in run.trainer.adapter.to_files(gpu, &model.config).await? {
        write(&name, &bytes)?;
    }
    let mut progress = run.progress();
    progress["options"] = options.clone();
    let state = save_checkpoint(gpu, &run.trainer, &model.config, &progress).await?;
    write(CHECKPOINT_FILE, &state)?;
    Ok(())
}

/// The run a checkpoint's `progress` describes (see `Run::progress`).
fn run_config_from(progress: &serde_json::Value) -> Result<RunConfig, String> {
    let u = |k: &str| progress.get(k).and_then(serde_json::Value::as_u64).ok_or(format!("progress.{k} is missing"));
    let schedule =
        progress.get("schedule").and_then(serde_json::Value::as_str).ok_or("progress.schedule is missing")?;
    Ok(RunConfig {
        steps: Some(u("total_steps")?),
        epochs: 1.0,
        grad_accum: u("grad_accum")? as usize,
        lr: progress.get("lr").and_then(serde_json::Value::as_f64).ok_or("progress.lr is missing")?,
        schedule: Schedule::from_name(schedule).map_err(|e| e.to_string())?,
        warmup_steps: u("warmup_steps")?,
    })
}

/// How a `train` run ended (other errors are `Err`).
#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    Done,
    /// `--stop-after` steps ran; the run can go on with `--resume`.
    Paused,
    /// A step's loss or gradient norm was NaN or infinite: the error was
    /// printed and the last good state written.
    NonFinite,
}

/// Writes `model.safetensors` into `out` and copies the config and tokenizer
/// files from the model folder `dir`.
fn write_model_folder(dir: &Path, out: &Path, model_safetensors: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
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

/// What `bench` trains on, and how.
struct StepsBench {
    model: Option<PathBuf>,
    compute: ComputeDtype,
    batch: usize,
    seq: usize,
    r: usize,
    checkpointing: bool,
    profile: bool,
    repeats: usize,
}

/// Training steps (tokens/s and peak GPU bytes) and generation (tokens/s),
/// on the given model folder or two random models.
async fn bench_train(
    gpu: &Gpu,
    b: &StepsBench,
    json: bool,
) -> Result<(Vec<TrainFigure>, Vec<GenerateFigure>), Box<dyn std::error::Error>> {
    use webpeft::bench::train::{llama_config, random_model_files};
    if !json {
        out!("adapter: {}, {:?} kernels", gpu.describe(), gpu.kernel_family());
        out!("| model | params | base | method | adapter params | batch×seq | ckpt | ms/step | tokens/s | peak GPU MiB | weights MiB |");
        out!("|---|---:|---|---|---:|---|---|---:|---:|---:|---:|");
    }
    let mut out = (Vec::new(), Vec::new());
    match &b.model {
        Some(dir) => {
            let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
            bench_model(gpu, &name, &DirFiles::new(dir)?, (b.batch, b.seq), b, json, &mut out).await?;
        }
        None => {
            let tiny = random_model_files(&llama_config(384, 64, 128, 2, 4, 2), 1)?;
            bench_model(gpu, "tiny (V 384, D 64, 2 layers)", &tiny, (4, 64), b, json, &mut out).await?;
            let m29 = random_model_files(&llama_config(8192, 512, 1376, 7, 8, 4), 1)?;
            bench_model(gpu, "29M (V 8192, D 512, 7 layers)", &m29, (b.batch, b.seq), b, json, &mut out).await?;
        }
    }
    if !json && webpeft::kernels::blocked::is_real_gpu(gpu) {
        let (tuned, pending) = gpu.tuning_counts();
        out!("autotuner: {tuned} shape classes of the blocked GEMM tuned ({pending} pending); --no-autotune for the fallback table");
    }
    Ok(out)
}

/// "nf4", or "nf4 (f16 compute)".
fn base_label(quant: &str, compute: &str) -> String {
    if compute == "f32" {
        quant.to_string()
    } else {
        format!("{quant} ({compute} compute)")
    }
}

/// The per-kernel table of one profiled step (`what`: "nf4 lora step").
fn print_kernel_times(what: &str, model: &str, kernels: &[webpeft::gpu::KernelTime]) {
    let total: f64 = kernels.iter().map(|k| k.total_ms).sum();
    out!("GPU time of one {what} on {model} ({total:.0} ms in kernels):");
    out!("| kernel | calls | ms | share |");
    out!("|---|---:|---:|---:|");
    for k in kernels {
        out!("| {} | {} | {:.1} | {:.1}% |", k.kernel, k.calls, k.total_ms, 100.0 * k.total_ms / total.max(1e-9));
    }
}

/// LoRA and seq_bn steps on f32 and NF4 bases, and generation, on one model.
async fn bench_model<F: ModelFiles>(
    gpu: &Gpu,
    name: &str,
    files: &F,
    (batch, seq): (usize, usize),
    b: &StepsBench,
    json: bool,
    (train, generate): &mut (Vec<TrainFigure>, Vec<GenerateFigure>),
) -> Result<(), Box<dyn std::error::Error>> {
    // f16 compute leaves an f32 base in f32: its rows would repeat an f32 run.
    let bases: &[QuantFormat] = match b.compute {
        ComputeDtype::F16 => &[QuantFormat::Nf4],
        ComputeDtype::F32 => &[QuantFormat::F32, QuantFormat::Nf4],
    };
    for &quant in bases {
        let mut model = Model::load(gpu, files, quant).await?;
        model.set_compute_dtype(gpu, b.compute)?;
        for method in ["lora", "seq_bn"] {
            let setup = StepSetup {
                checkpointing: b.checkpointing,
                steps: b.repeats,
                profile: b.profile,
                r: b.r,
                ..StepSetup::new(quant, method, batch, seq.min(model.config.max_position_embeddings))
            };
            let f = train_figure_on(gpu, name, &model, &setup).await?;
            if !json && !f.kernels.is_empty() {
                let what = format!("{} {} step", base_label(&f.quant, &f.compute_dtype), f.method);
                print_kernel_times(&what, &f.model, &f.kernels);
            }
            if !json {
                out!(
                    "| {} | {:.1}M | {} | {} | {} | {}×{} | {} | {:.0} | {:.0} | {:.1} | {:.1} |",
                    f.model,
                    f.parameters as f64 / 1e6,
                    base_label(&f.quant, &f.compute_dtype),
                    if f.r > 0 { format!("lora r{}", f.r) } else { f.method.clone() },
                    f.adapter_parameters,
                    f.batch,
                    f.seq,
                    if f.checkpointing { "yes" } else { "no" },
                    f.step_ms,
                    f.tokens_per_s,
                    f.peak_gpu_bytes as f64 / (1 << 20) as f64,
                    f.weight_bytes as f64 / (1 << 20) as f64
                );
            }
            train.push(f);
        }
        let g = generate_figure(gpu, name, &model, (16, 32), b.profile).await?;
        if !json && !g.kernels.is_empty() {
            let what = format!("{} decoding step", base_label(&g.quant, &g.compute_dtype));
            print_kernel_times(&what, &g.model, &g.kernels);
        }
        if !json {
            out!(
                "generate {} {}: prompt {} tokens, first token {:.0} ms, {:.1} tokens/s after it",
                g.model,
                base_label(&g.quant, &g.compute_dtype),
                g.prompt_tokens,
                g.first_token_ms,
                g.decode_tokens_per_s
            );
        }
        generate.push(g);
    }
    Ok(())
}

/// `webpeft bench --llama-1b`: the memory plan of one NF4 LoRA r 16 step of a
/// Llama-3.2-1B-shaped model at 1×512 with gradient checkpointing, and the
/// measured peak of really running it (random weights built in memory).
async fn bench_llama_1b(gpu: &Gpu, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    use webpeft::bench::train::{llama_1b_config, llama_1b_plan_input, random_model_files};
    use webpeft::train::plan::plan_memory;
    let config_json = llama_1b_config();
    let config = Config::from_json(config_json.as_bytes())?;
    let input = llama_1b_plan_input();
    let plan = plan_memory(&config, &input, gpu.max_binding_bytes());
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    eprintln!(
        "plan: {:.2} GiB (weights {:.2}, activations {:.2})",
        gib(plan.total_bytes),
        gib(plan.weight_bytes),
        gib(plan.activation_bytes)
    );
    let start = std::time::Instant::now();
    let files = random_model_files(&config_json, 1)?;
    let model = Model::load(gpu, &files, QuantFormat::Nf4).await?;
    drop(files);
    eprintln!("built and loaded in {:.0} s", start.elapsed().as_secs_f64());
    // On a software GPU one step, the untimed warm-up skipped: each takes many
    // minutes there. On a real GPU a warm-up step first (it compiles the
    // pipelines and runs the autotuner), then the median of three.
    let real = webpeft::kernels::blocked::is_real_gpu(gpu);
    let (steps, warmup) = if real { (3, true) } else { (1, false) };
    let setup = StepSetup { checkpointing: true, steps, warmup, ..StepSetup::new(QuantFormat::Nf4, "lora", 1, 512) };
    let f = train_figure_on(gpu, "Llama-3.2-1B shape (random)", &model, &setup).await?;
    let out = serde_json::json!({
        "adapter": gpu.info(), "plan": plan, "train": f, "host_peak_rss_bytes": host_peak_rss_bytes(),
        "plan_over_measured": plan.total_bytes as f64 / f.peak_gpu_bytes as f64,
    });
    if json {
        out!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        out!(
            "Llama-3.2-1B shape, NF4, LoRA r16 all-linear, 1×512, checkpointing: planned {:.2} GiB, measured peak {:.2} GiB, step {:.1} s ({:.1} tokens/s)",
            gib(plan.total_bytes),
            gib(f.peak_gpu_bytes),
            f.step_ms / 1e3,
            f.tokens_per_s
        );
    }
    Ok(())
}

/// `webpeft train`.
async fn train(mut a: TrainArgs) -> Result<Stopped, Box<dyn std::error::Error>> {
    // A resumed run is the run its checkpoint holds (resume.rs).
    let checkpoint = match a.resume.clone() {
        Some(dir) => {
            let path = dir.join(CHECKPOINT_FILE);
            let bytes = std::fs::read(&path).map_err(|e| format!("--resume: {}: {e}", path.display()))?;
            let saved = read_checkpoint(&bytes).map_err(|e| format!("--resume {}: {e}", dir.display()))?;
            resume::settle(&mut a, &saved, &dir)?;
            Some(bytes)
        }
        None => None,
    };
    a.check_method_options()?;
    if let Some(dir) = &a.init_adapter {
        a.note_ignored_options(&dir.display().to_string());
    }
    let recipe = a.train_recipe();
    recipe.validate().map_err(flag_error)?;
    let data_path = a.data.clone().ok_or("--data is required")?;
    let files = DirFiles::new(&a.model)?;
    // config.json first: a folder that is no model at all says so, not that its tokenizer is missing.
    let config = Config::load(&files).await?;
    let tokenizer = Tokenizer::load(&files).await?;
    tokenizer.check_model(&config)?;
    let max = config.max_position_embeddings;
    if let Some(n) = a.seq_len.filter(|&n| n > max) {
        eprintln!("note: --seq-len {n} capped at the model's max_position_embeddings {max}");
    }
    let opts = recipe.data_options(max);
    let dataset = read_dataset(&recipe, &data_path, &tokenizer, &opts)?;
    let options = serde_json::to_value(resume::RunOptions::of(&a, opts.seq_len, &data_path))?;
    let eval = match &a.eval_data {
        Some(path) => Some(read_dataset(&recipe, path, &tokenizer, &recipe.eval_data_options(max))?),
        None => None,
    };
    let gpu = cli_gpu(webpeft::KernelFamily::Auto, true).await?;
    let model = load_model(&gpu, &files, (a.quant, a.compute_dtype)).await?;
    let (trainer, progress) = match (&a.resume, &checkpoint) {
        (Some(dir), Some(bytes)) => {
            let (trainer, progress) =
                load_checkpoint(&gpu, bytes, &model.config).map_err(|e| format!("--resume {}: {e}", dir.display()))?;
            (trainer, Some(progress))
        }
        _ => {
            let adapter = match &a.init_adapter {
                Some(dir) => init_adapter(&gpu, dir, a.method(), &model).await?,
                None => a.new_adapter(&gpu, &model)?,
            };
            (webpeft::train::trainer::Trainer::new(&gpu, adapter, recipe.optimizer.clone(), recipe.seed)?, None)
        }
    };
    // The adapter and its options are valid: only now the output folder, so a
    // refused option (--r 0) leaves nothing behind.
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let mut run_config = recipe.run_config();
    if let Some(progress) = &progress {
        // The run goes on as it started: its schedule spans its own step total.
        let saved = run_config_from(progress).map_err(|e| format!("--resume: {e}"))?;
        if (saved.steps != a.steps && (a.steps.is_some() || a.epochs.is_some()))
            || a.lr.is_some_and(|lr| lr != saved.lr)
            || saved.schedule != a.schedule
            || saved.warmup_steps != a.warmup
            || saved.grad_accum != a.grad_accum
        {
            eprintln!(
                "note: resuming the checkpoint's run ({} steps, lr {:e}, {} schedule, warmup {}, grad-accum {}); \
                 the schedule flags given here are ignored",
                saved.steps.unwrap_or(0),
                saved.lr,
                saved.schedule.name(),
                saved.warmup_steps,
                saved.grad_accum
            );
        }
        run_config = saved;
    }
    let mut trainer = trainer;
    trainer.gradient_checkpointing = recipe.gradient_checkpointing;
    let mut run = Run::new(dataset, trainer, &run_config)?;
    if let Some(progress) = &progress {
        run.seek(Run::position_from(progress)?)?;
        eprintln!("resuming at step {} of {}", run.trainer.step, run.total_steps());
    }
    eprintln!(
        "training {} ({} parameters) on {} rows of {}: {} steps of {}×{} rows, lr {:e} ({}), {} base",
        run.trainer.adapter.method(),
        run.trainer.adapter.num_params(),
        run.dataset.len(),
        data_path.display(),
        run.total_steps(),
        a.batch_size,
        a.grad_accum,
        run_config.lr,
        run_config.schedule.name(),
        model.format.name()
    );

    let mut stopped = Stopped::Done;
    let mut this_run = 0;
    loop {
        if a.stop_after.is_some_and(|n| this_run >= n) {
            stopped = Stopped::Paused;
            break;
        }
        if this_run == 0 {
            // The first step builds every GPU program it runs: say so, since it can take a minute.
            let software =
                if gpu.info().device_type == "Cpu" { ", a software renderer: expect it to be slow" } else { "" };
            eprintln!("first step: compiling its GPU programs on {}{software}…", gpu.describe());
        }
        let start = std::time::Instant::now();
        match run.step(&gpu, &model).await {
            Ok(Some(s)) => {
                let secs = start.elapsed().as_secs_f64();
                if this_run == 0 {
                    eprintln!("first step done in {secs:.1} s ({} GPU programs built)", gpu.pipeline_count());
                }
                let line = StepLine {
                    step: s.step,
                    loss: s.loss,
                    lr: s.lr,
                    grad_norm: s.grad_norm,
                    tokens_per_s: s.tokens as f64 / secs.max(1e-9),
                };
                out!("{}", serde_json::to_string(&line)?);
                this_run += 1;
                if a.save_steps.is_some_and(|n| n > 0 && s.step % n == 0) {
                    save_run(&gpu, &run, &model, &a.out, &options).await?;
                }
            }
            Ok(None) => break,
            Err(e @ webpeft::Error::NonFinite { .. }) => {
                eprintln!("error: {e}");
                stopped = Stopped::NonFinite;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let (Some(eval), Stopped::Done) = (&eval, &stopped) {
        let stats = run.evaluate(&gpu, &model, eval).await?;
        let line = EvalLine { eval_loss: stats.loss, eval_perplexity: stats.perplexity, eval_tokens: stats.tokens };
        out!("{}", serde_json::to_string(&line)?);
    }
    save_run(&gpu, &run, &model, &a.out, &options).await?;
    eprintln!("wrote the adapter and {CHECKPOINT_FILE} (step {}) to {}", run.trainer.step, a.out.display());
    Ok(stopped)
}

/// `train --init-adapter`: the folder's adapter, of the kind --method names.
async fn init_adapter(
    gpu: &Gpu,
    dir: &Path,
    method: Method,
    model: &Model,
) -> Result<Adapter, Box<dyn std::error::Error>> {
    let at = || format!("--init-adapter {}", dir.display());
    // A PEFT config of another method (IA3, prefix tuning, …) says so in peft_type.
    let config = dir.join(webpeft::peft::ADAPTER_CONFIG_FILE);
    if let Ok(bytes) = std::fs::read(&config) {
        let value: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        if let Some(t) = value.as_ref().and_then(|v| v.get("peft_type")).and_then(|t| t.as_str()) {
            if t != "LORA" {
                return Err(format!(
                    "{}: adapter_config.json has peft_type \"{t}\"; webpeft trains LoRA (\"LORA\") and AdapterHub bottleneck adapters",
                    at()
                )
                .into());
            }
        }
    }
    let files = DirFiles::new(dir).map_err(|e| format!("{}: {e}", at()))?;
    let adapter = Adapter::load(gpu, &files, &model.config).await.map_err(|e| format!("{}: {e}", at()))?;
    if adapter.method() != method.name() {
        return Err(format!("{} holds a {} adapter, but --method is {}", at(), adapter.method(), method.name()).into());
    }
    Ok(adapter)
}

const MERGE_BOTTLENECK: &str =
    "merge applies to LoRA adapters; bottleneck adapters cannot be folded into the base weights";

/// `webpeft merge`: base + LoRA folded into one f32 model folder.
async fn merge(dir: &Path, adapter: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
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
    let lora = match load_adapter(&gpu, adapter, &model).await? {
        Adapter::Lora(lora) => lora,
        Adapter::Bottleneck(_) => return Err(format!("{}: {MERGE_BOTTLENECK}", adapter.display()).into()),
    };
    merge_lora(&gpu, &mut model, &lora)?;
    let bytes = export_safetensors(&gpu, &model).await?;
    write_model_folder(dir, out, &bytes)?;
    let target = out.join("model.safetensors");
    let modules = lora.layers.iter().flatten().filter(|f| f.is_some()).count();
    out!(
        "{}: {} merged (r {}, {modules} modules; {:.2} MiB f32)",
        target.display(),
        adapter.display(),
        lora.config.r,
        bytes.len() as f64 / 1048576.0
    );
    Ok(())
}
