//! The one pipeline cache. Shaders load with `include_str!` from `shaders/`, are
//! named by [`Kernel`], and are specialised by a tiny prelude of named
//! constants (tile sizes, flags). A pipeline is built once per
//! (kernel, entry point, constants) and its bind-group layout kept beside it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Gpu;

/// One WGSL file per kernel family, forward and backward side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Matmul,
    /// matmul.wgsl with subgroup.wgsl and the subgroup kernels appended (needs Features::SUBGROUP).
    MatmulSubgroup,
    /// matmul.wgsl with the workgroup-memory GEMM core appended (real GPUs).
    MatmulBlocked,
    /// matmul.wgsl with the decoding GEMV appended: f32 sums, the portable
    /// reduction (real GPUs).
    MatmulGemv,
    /// The same with the subgroup reduction (needs Features::SUBGROUP).
    MatmulGemvSubgroup,
    QMatmul,
    /// qmatmul.wgsl with the workgroup-memory GEMM core appended (real GPUs).
    QMatmulBlocked,
    /// qmatmul.wgsl with the decoding GEMV appended: f32 sums, the portable
    /// reduction (real GPUs).
    QMatmulGemv,
    /// The same with the subgroup reduction (needs Features::SUBGROUP).
    QMatmulGemvSubgroup,
    /// The GEMV computing in f16, portable reduction, behind `enable f16;` (needs SHADER_F16).
    QMatmulGemvF16,
    /// The GEMV computing in f16 with the subgroup reduction (needs SHADER_F16 and SUBGROUP).
    QMatmulGemvF16Subgroup,
    /// qmatmul.wgsl with subgroup.wgsl and the subgroup kernels appended (needs Features::SUBGROUP).
    QMatmulSubgroup,
    /// qmatmul.wgsl with the f16-compute kernels appended, behind `enable f16;` (needs SHADER_F16).
    QMatmulF16,
    /// qmatmul.wgsl with the blocked GEMM and its f16-compute form
    /// (`shaders/gemm_blocked_f16.wgsl`) appended, behind `enable f16;`.
    QMatmulBlockedF16,
    Quant,
    RmsNorm,
    Rope,
    SwiGlu,
    Softmax,
    Attention,
    /// attention.wgsl with subgroup.wgsl and the subgroup kernels appended (needs Features::SUBGROUP).
    AttentionSubgroup,
    /// Attention over packed rows: attention_segments.wgsl (block-diagonal causal, a starts binding).
    AttentionSegmented,
    /// The subgroup kernels over packed rows.
    AttentionSubgroupSegmented,
    /// attention.wgsl with the workgroup-memory ("flash") kernels of attention_flash.wgsl appended (real GPUs).
    AttentionFlash,
    /// The flash kernels over packed rows.
    AttentionFlashSegmented,
    /// attention.wgsl with the split-KV forward of attention_split_kv.wgsl
    /// appended: decoding's few queries against many keys (real GPUs).
    AttentionSplitKv,
    Embedding,
    /// Trainable token rows (PEFT's trainable_token_indices) in the embedding and the tied head.
    TokenRows,
    Elementwise,
    CrossEntropy,
    Reduce,
    AdamW,
    /// AdaLoRA's scaled factor, orthogonality regulariser and rank allocator.
    Adalora,
    /// DoRA's weight norm.
    Dora,
    /// The DPO and ORPO losses on per-sequence log-probabilities.
    Preference,
    /// A sequence classifier's loss on its pooled logits.
    Classification,
    /// grpo.wgsl: GRPO's per-token loss.
    Grpo,
    /// Sampling a token from each row of logits.
    Sample,
}

impl Kernel {
    /// Whether the module computes in f16 (`enable f16;`, Features::SHADER_F16).
    pub fn needs_f16(self) -> bool {
        matches!(
            self,
            Kernel::QMatmulF16 | Kernel::QMatmulGemvF16 | Kernel::QMatmulGemvF16Subgroup | Kernel::QMatmulBlockedF16
        )
    }

    /// Every kernel family, for the test that compiles every pipeline
    /// (`tests/pipelines.rs`); a new one goes here too.
    pub const ALL: [Kernel; 38] = [
        Kernel::Matmul,
        Kernel::MatmulSubgroup,
        Kernel::MatmulBlocked,
        Kernel::MatmulGemv,
        Kernel::MatmulGemvSubgroup,
        Kernel::QMatmul,
        Kernel::QMatmulBlocked,
        Kernel::QMatmulGemv,
        Kernel::QMatmulGemvSubgroup,
        Kernel::QMatmulGemvF16,
        Kernel::QMatmulGemvF16Subgroup,
        Kernel::QMatmulSubgroup,
        Kernel::QMatmulF16,
        Kernel::QMatmulBlockedF16,
        Kernel::Quant,
        Kernel::RmsNorm,
        Kernel::Rope,
        Kernel::SwiGlu,
        Kernel::Softmax,
        Kernel::Attention,
        Kernel::AttentionSubgroup,
        Kernel::AttentionSegmented,
        Kernel::AttentionSubgroupSegmented,
        Kernel::AttentionFlash,
        Kernel::AttentionFlashSegmented,
        Kernel::AttentionSplitKv,
        Kernel::Embedding,
        Kernel::TokenRows,
        Kernel::Elementwise,
        Kernel::CrossEntropy,
        Kernel::Reduce,
        Kernel::AdamW,
        Kernel::Adalora,
        Kernel::Dora,
        Kernel::Preference,
        Kernel::Classification,
        Kernel::Grpo,
        Kernel::Sample,
    ];

    pub fn source(self) -> &'static str {
        match self {
            Kernel::Matmul => include_str!("../../shaders/matmul.wgsl"),
            Kernel::MatmulSubgroup => {
                concat!(
                    include_str!("../../shaders/matmul.wgsl"),
                    include_str!("../../shaders/subgroup.wgsl"),
                    include_str!("../../shaders/matmul_subgroup.wgsl")
                )
            }
            Kernel::MatmulBlocked => {
                concat!(include_str!("../../shaders/matmul.wgsl"), include_str!("../../shaders/gemm_blocked.wgsl"))
            }
            Kernel::MatmulGemv => concat!(
                include_str!("../../shaders/matmul.wgsl"),
                include_str!("../../shaders/gemv_f32.wgsl"),
                include_str!("../../shaders/gemv.wgsl")
            ),
            Kernel::MatmulGemvSubgroup => concat!(
                include_str!("../../shaders/matmul.wgsl"),
                include_str!("../../shaders/gemv_f32.wgsl"),
                include_str!("../../shaders/gemv_subgroup.wgsl")
            ),
            Kernel::QMatmul => {
                concat!(
                    include_str!("../../shaders/four_bit.wgsl"),
                    include_str!("../../shaders/four_bit_levels.wgsl"),
                    include_str!("../../shaders/qmatmul.wgsl")
                )
            }
            Kernel::QMatmulBlocked => concat!(
                include_str!("../../shaders/four_bit.wgsl"),
                include_str!("../../shaders/four_bit_levels.wgsl"),
                include_str!("../../shaders/qmatmul.wgsl"),
                include_str!("../../shaders/gemm_blocked.wgsl")
            ),
            Kernel::QMatmulGemv => concat!(
                include_str!("../../shaders/four_bit.wgsl"),
                include_str!("../../shaders/four_bit_staged.wgsl"),
                include_str!("../../shaders/qmatmul.wgsl"),
                include_str!("../../shaders/gemv_f32.wgsl"),
                include_str!("../../shaders/gemv.wgsl")
            ),
            Kernel::QMatmulGemvSubgroup => concat!(
                include_str!("../../shaders/four_bit.wgsl"),
                include_str!("../../shaders/four_bit_staged.wgsl"),
                include_str!("../../shaders/qmatmul.wgsl"),
                include_str!("../../shaders/gemv_f32.wgsl"),
                include_str!("../../shaders/gemv_subgroup.wgsl")
            ),
            Kernel::QMatmulGemvF16 => concat!(
                include_str!("../../shaders/four_bit.wgsl"),
                include_str!("../../shaders/four_bit_staged.wgsl"),
                include_str!("../../shaders/qmatmul.wgsl"),
                include_str!("../../shaders/gemv_f16.wgsl"),
                include_str!("../../shaders/gemv.wgsl")
            ),
            Kernel::QMatmulGemvF16Subgroup => concat!(
                include_str!("../../shaders/four_bit.wgsl"),
                include_str!("../../shaders/four_bit_staged.wgsl"),
                include_str!("../../shaders/qmatmul.wgsl"),
                include_str!("../../shaders/gemv_f16.wgsl"),
                include_str!("../../shaders/gemv_subgroup.wgsl")
            ),
            Kernel::QMatmulSubgroup => {
                concat!(
                    include_str!("../../shaders/four_bit.wgsl"),
                    include_str!("../../shaders/four_bit_levels.wgsl"),
                    include_str!("../../shaders/qmatmul.wgsl"),
                    include_str!("../../shaders/subgroup.wgsl"),
                    include_str!("../../shaders/qmatmul_subgroup.wgsl")
                )
            }
            Kernel::QMatmulF16 => concat!(
                include_str!("../../shaders/four_bit.wgsl"),
                include_str!("../../shaders/four_bit_levels.wgsl"),
                include_str!("../../shaders/qmatmul.wgsl"),
                include_str!("../../shaders/qmatmul_f16.wgsl")
            ),
            Kernel::QMatmulBlockedF16 => concat!(
                include_str!("../../shaders/four_bit.wgsl"),
                include_str!("../../shaders/four_bit_levels.wgsl"),
                include_str!("../../shaders/qmatmul.wgsl"),
                include_str!("../../shaders/gemm_blocked.wgsl"),
                include_str!("../../shaders/gemm_blocked_f16.wgsl")
            ),
            Kernel::Quant => {
                concat!(
                    include_str!("../../shaders/four_bit.wgsl"),
                    include_str!("../../shaders/four_bit_levels.wgsl"),
                    include_str!("../../shaders/quant.wgsl")
                )
            }
            Kernel::RmsNorm => {
                concat!(include_str!("../../shaders/workgroup_reduce.wgsl"), include_str!("../../shaders/rmsnorm.wgsl"))
            }
            Kernel::Rope => include_str!("../../shaders/rope.wgsl"),
            Kernel::SwiGlu => include_str!("../../shaders/swiglu.wgsl"),
            Kernel::Softmax => {
                concat!(include_str!("../../shaders/workgroup_reduce.wgsl"), include_str!("../../shaders/softmax.wgsl"))
            }
            Kernel::Attention => {
                concat!(include_str!("../../shaders/attention_rows.wgsl"), include_str!("../../shaders/attention.wgsl"))
            }
            Kernel::AttentionSegmented => concat!(
                include_str!("../../shaders/attention_segments.wgsl"),
                include_str!("../../shaders/attention.wgsl")
            ),
            Kernel::AttentionSubgroupSegmented => concat!(
                include_str!("../../shaders/attention_segments.wgsl"),
                include_str!("../../shaders/attention.wgsl"),
                include_str!("../../shaders/subgroup.wgsl"),
                include_str!("../../shaders/attention_subgroup.wgsl")
            ),
            Kernel::AttentionSubgroup => {
                concat!(
                    include_str!("../../shaders/attention_rows.wgsl"),
                    include_str!("../../shaders/attention.wgsl"),
                    include_str!("../../shaders/subgroup.wgsl"),
                    include_str!("../../shaders/attention_subgroup.wgsl")
                )
            }
            Kernel::AttentionFlash => concat!(
                include_str!("../../shaders/attention_rows.wgsl"),
                include_str!("../../shaders/attention.wgsl"),
                include_str!("../../shaders/attention_flash.wgsl")
            ),
            Kernel::AttentionFlashSegmented => concat!(
                include_str!("../../shaders/attention_segments.wgsl"),
                include_str!("../../shaders/attention.wgsl"),
                include_str!("../../shaders/attention_flash.wgsl")
            ),
            Kernel::AttentionSplitKv => concat!(
                include_str!("../../shaders/attention_rows.wgsl"),
                include_str!("../../shaders/attention.wgsl"),
                include_str!("../../shaders/attention_split_kv.wgsl")
            ),
            Kernel::Embedding => include_str!("../../shaders/embedding.wgsl"),
            Kernel::TokenRows => include_str!("../../shaders/token_rows.wgsl"),
            Kernel::Elementwise => include_str!("../../shaders/elementwise.wgsl"),
            Kernel::CrossEntropy => concat!(
                include_str!("../../shaders/workgroup_reduce.wgsl"),
                include_str!("../../shaders/cross_entropy.wgsl")
            ),
            Kernel::Reduce => concat!(
                include_str!("../../shaders/workgroup_reduce.wgsl"),
                include_str!("../../shaders/order_key.wgsl"),
                include_str!("../../shaders/reduce.wgsl")
            ),
            Kernel::Sample => concat!(
                include_str!("../../shaders/workgroup_reduce.wgsl"),
                include_str!("../../shaders/order_key.wgsl"),
                include_str!("../../shaders/sample.wgsl")
            ),
            Kernel::AdamW => include_str!("../../shaders/adamw.wgsl"),
            Kernel::Adalora => {
                concat!(include_str!("../../shaders/workgroup_reduce.wgsl"), include_str!("../../shaders/adalora.wgsl"))
            }
            Kernel::Dora => {
                concat!(include_str!("../../shaders/workgroup_reduce.wgsl"), include_str!("../../shaders/dora.wgsl"))
            }
            Kernel::Preference => concat!(
                include_str!("../../shaders/workgroup_reduce.wgsl"),
                include_str!("../../shaders/preference.wgsl")
            ),
            Kernel::Classification => include_str!("../../shaders/classification.wgsl"),
            Kernel::Grpo => {
                concat!(include_str!("../../shaders/workgroup_reduce.wgsl"), include_str!("../../shaders/grpo.wgsl"))
            }
        }
    }

    /// The store epilogue appended to a module of the matmul.wgsl and
    /// qmatmul.wgsl families: the low-rank term (`shaders/low_rank.wgsl`)
    /// for a key made [`PipelineKey::low_rank`], else its absence
    /// (`shaders/low_rank_none.wgsl`), then the output op
    /// (`shaders/output_op.wgsl`) for a key with
    /// [`PipelineKey::output_op`], else `shaders/output_op_none.wgsl`;
    /// nothing for other families.
    fn epilogue(self, low_rank: bool, output_op: u32) -> String {
        let stores_linears = matches!(
            self,
            Kernel::Matmul
                | Kernel::MatmulSubgroup
                | Kernel::MatmulBlocked
                | Kernel::MatmulGemv
                | Kernel::MatmulGemvSubgroup
                | Kernel::QMatmul
                | Kernel::QMatmulBlocked
                | Kernel::QMatmulGemv
                | Kernel::QMatmulGemvSubgroup
                | Kernel::QMatmulGemvF16
                | Kernel::QMatmulGemvF16Subgroup
                | Kernel::QMatmulSubgroup
                | Kernel::QMatmulF16
                | Kernel::QMatmulBlockedF16
        );
        if !stores_linears {
            return String::new();
        }
        let term = match low_rank {
            true => include_str!("../../shaders/low_rank.wgsl"),
            false => include_str!("../../shaders/low_rank_none.wgsl"),
        };
        let op = match output_op {
            0 => include_str!("../../shaders/output_op_none.wgsl"),
            _ => include_str!("../../shaders/output_op.wgsl"),
        };
        format!("{term}{op}")
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Matmul => "matmul",
            Kernel::MatmulSubgroup => "matmul_subgroup",
            Kernel::MatmulBlocked => "matmul_blocked",
            Kernel::MatmulGemv => "matmul_gemv",
            Kernel::MatmulGemvSubgroup => "matmul_gemv_subgroup",
            Kernel::QMatmul => "qmatmul",
            Kernel::QMatmulBlocked => "qmatmul_blocked",
            Kernel::QMatmulGemv => "qmatmul_gemv",
            Kernel::QMatmulGemvSubgroup => "qmatmul_gemv_subgroup",
            Kernel::QMatmulGemvF16 => "qmatmul_gemv_f16",
            Kernel::QMatmulGemvF16Subgroup => "qmatmul_gemv_f16_subgroup",
            Kernel::QMatmulSubgroup => "qmatmul_subgroup",
            Kernel::QMatmulF16 => "qmatmul_f16",
            Kernel::QMatmulBlockedF16 => "qmatmul_blocked_f16",
            Kernel::Quant => "quant",
            Kernel::RmsNorm => "rmsnorm",
            Kernel::Rope => "rope",
            Kernel::SwiGlu => "swiglu",
            Kernel::Softmax => "softmax",
            Kernel::Attention => "attention",
            Kernel::AttentionSubgroup => "attention_subgroup",
            Kernel::AttentionSegmented => "attention_segmented",
            Kernel::AttentionSubgroupSegmented => "attention_subgroup_segmented",
            Kernel::AttentionFlash => "attention_flash",
            Kernel::AttentionFlashSegmented => "attention_flash_segmented",
            Kernel::AttentionSplitKv => "attention_split_kv",
            Kernel::Embedding => "embedding",
            Kernel::TokenRows => "token_rows",
            Kernel::Elementwise => "elementwise",
            Kernel::CrossEntropy => "cross_entropy",
            Kernel::Reduce => "reduce",
            Kernel::AdamW => "adamw",
            Kernel::Adalora => "adalora",
            Kernel::Dora => "dora",
            Kernel::Preference => "preference",
            Kernel::Classification => "classification",
            Kernel::Grpo => "grpo",
            Kernel::Sample => "sample",
        }
    }
}

/// Helpers every kernel may use (2-D dispatch flattening and the like).
const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// A specialisation constant, written into the prelude as a WGSL `const`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Const {
    U32(u32),
    Bool(bool),
    F32(f32),
}

impl Const {
    fn wgsl(self, name: &str) -> String {
        match self {
            Const::U32(v) => format!("const {name}: u32 = {v}u;\n"),
            Const::Bool(v) => format!("const {name}: bool = {v};\n"),
            Const::F32(v) => format!("const {name}: f32 = {v:?};\n"),
        }
    }

    fn bits(self) -> u64 {
        match self {
            Const::U32(v) => v as u64,
            Const::Bool(v) => v as u64,
            Const::F32(v) => v.to_bits() as u64,
        }
    }
}

/// What identifies a pipeline: kernel family, entry point and constants.
#[derive(Clone, Debug)]
pub struct PipelineKey {
    pub kernel: Kernel,
    pub entry: &'static str,
    pub consts: Vec<(&'static str, Const)>,
    /// A matmul.wgsl or qmatmul.wgsl module whose store adds a low-rank term (see [`PipelineKey::low_rank`]).
    pub low_rank: bool,
    /// Its output op: 0 none, 1 a bias, 2 SwiGLU's gate (see [`PipelineKey::output_op`]).
    pub output_op: u32,
}

impl PipelineKey {
    pub fn new(kernel: Kernel, entry: &'static str) -> Self {
        Self { kernel, entry, consts: Vec::new(), low_rank: false, output_op: 0 }
    }

    /// The same pipeline with LoRA's term fused into its store
    /// (`shaders/low_rank.wgsl`, bindings 8 and 9), when `on`.
    pub fn low_rank(mut self, on: bool) -> Self {
        self.low_rank = on;
        self
    }

    /// The same pipeline with an output op in its store
    /// (`shaders/output_op.wgsl`, binding 11): `op` 1 adds a bias, 2 gates
    /// with SwiGLU; 0 none.
    pub fn output_op(mut self, op: u32) -> Self {
        self.output_op = op;
        self
    }

    pub fn with(mut self, name: &'static str, value: Const) -> Self {
        self.consts.push((name, value));
        self
    }

    fn hash_key(&self) -> PipeKey {
        let consts = self.consts.iter().map(|(n, c)| (*n, c.bits())).collect();
        (self.kernel, self.entry, consts, self.low_rank, self.output_op)
    }

    /// What tells pipelines apart: equal ids share one pipeline.
    pub fn id(&self) -> impl std::hash::Hash + Eq {
        self.hash_key()
    }

    fn prelude(&self) -> String {
        // Enable directives come before every declaration.
        let enable = if self.kernel.needs_f16() { "enable f16;\n" } else { "" };
        let mut consts: String = self.consts.iter().map(|(n, c)| c.wgsl(n)).collect();
        if self.output_op != 0 {
            consts += &Const::U32(self.output_op).wgsl("OUTPUT_OP");
        }
        format!("{enable}{consts}")
    }

    /// The module's whole WGSL source: the prelude (enable directives and
    /// the key's constants), the shared helpers, the kernel's file and its
    /// store's epilogue. Keys that differ only in their entry share it.
    pub fn wgsl(&self) -> String {
        let (kernel, epilogue) = (self.kernel.source(), self.kernel.epilogue(self.low_rank, self.output_op));
        format!("{}{COMMON}{kernel}{epilogue}", self.prelude())
    }

    /// A short name for timing tables: `matmul/matmul_tiled`
    /// (`qmatmul/qmatmul_nt+low_rank` where the store adds LoRA's term,
    /// `+bias` or `+gate` where it has an output op).
    pub fn label(&self) -> String {
        let fused = if self.low_rank { "+low_rank" } else { "" };
        let op = ["", "+bias", "+gate"].get(self.output_op as usize).unwrap_or(&"+op");
        format!("{}/{}{fused}{op}", self.kernel.name(), self.entry)
    }
}

pub(crate) struct CachedPipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) label: String,
}

type ModuleKey = (Kernel, Vec<(&'static str, u64)>, bool, u32);
type PipeKey = (Kernel, &'static str, Vec<(&'static str, u64)>, bool, u32);

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<ModuleKey, Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<PipeKey, Arc<CachedPipeline>>>,
}

impl PipelineCache {
    pub(crate) fn get(&self, gpu: &Gpu, key: &PipelineKey) -> Arc<CachedPipeline> {
        let hash_key = key.hash_key();
        if let Some(p) = self.pipelines.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&hash_key) {
            return p.clone();
        }
        let module_key = (key.kernel, hash_key.2.clone(), key.low_rank, key.output_op);
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            modules
                .entry(module_key)
                .or_insert_with(|| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(key.kernel.name()),
                        source: wgpu::ShaderSource::Wgsl(key.wgsl().into()),
                    };
                    if gpu.shader_checks {
                        return Arc::new(gpu.device.create_shader_module(desc));
                    }
                    // In the browser wgpu's WebGPU backend ignores the
                    // runtime-check flags: the browser always applies its own.
                    // SAFETY: these are webpeft's own shaders, not user code. Every
                    // launcher checks that the largest element a dispatch can touch
                    // lies inside each bound tensor (typed errors otherwise), and
                    // every loop is bounded by its launch parameters. Dropping
                    // naga's per-access clamps and loop counters is what lets
                    // register-tiled loops unroll: 2-4x on lavapipe. The driver's
                    // own robust buffer access still applies.
                    Arc::new(unsafe {
                        gpu.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                    })
                })
                .clone()
        };
        let label = key.label();
        let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: Default::default(),
            cache: gpu.pipeline_cache.as_ref().map(|(c, _)| c),
        });
        let layout = pipeline.get_bind_group_layout(0);
        let cached = Arc::new(CachedPipeline { pipeline, layout, label });
        self.pipelines.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(hash_key, cached.clone());
        cached
    }

    pub(crate) fn len(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }
}

impl Gpu {
    /// Build `key`'s pipeline now (or find it built), returning the error
    /// wgpu reports for its shader or pipeline instead of leaving it to the
    /// device's error log. `tests/pipelines.rs` compiles every variant so.
    pub async fn compile_pipeline(&self, key: &PipelineKey) -> crate::error::Result<()> {
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        self.pipelines.get(self, key);
        let internal = internal.pop().await;
        let validation = validation.pop().await;
        match internal.or(validation) {
            None => Ok(()),
            Some(e) => Err(crate::error::Error::Gpu { context: format!("compiling {key:?}"), message: e.to_string() }),
        }
    }

    /// Whether shaders are compiled with naga's runtime checks
    /// ([`super::GpuOptions::shader_checks`] or `WEBPEFT_SHADER_CHECKS=1`).
    pub fn shader_checks(&self) -> bool {
        self.shader_checks
    }

    /// Number of distinct pipelines built so far.
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.len()
    }
}
