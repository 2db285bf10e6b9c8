//! The JavaScript API: `Gpu`, `Model` and `TrainRun`, all async (every method
//! that touches the GPU returns a Promise). Errors reject with an `Error`
//! whose message is webpeft's typed error text; nothing panics across the
//! boundary. A method that needs the model while another call is using it
//! (say, adding an adapter mid-step) rejects with "busy" instead of waiting.

// Borrows of the model are held across awaits on purpose: they are taken with
// `try_borrow`, so a conflicting call gets a "busy" error instead of a panic.
#![allow(clippy::await_holding_refcell_ref)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

use super::files::WebFiles;
use super::options::{
    AdaLoraOptions, BottleneckOptions, EvalOptions, Ia3Options, LoraOptions, PTuningOptions, PlanOptions,
    PrefixTuningOptions, PromptTuningOptions, TrainOptions, TrainableTokensOptions,
};
use super::types::*;
use crate::gpu::Gpu;
use crate::model::config::GenerationDefaults;
use crate::model::llama::{GenerationChoices, GenerationConfig, Hooks};
use crate::model::source::MemorySource;
use crate::model::stop_strings::StopStrings;
use crate::model::tokenizer::Tokenizer;
use crate::model::{Config, Model};
use crate::peft::adapter::{hooks_of, Adapter};
use crate::peft::adapter_set::AdapterSet;
use crate::peft::archive::{from_zip, to_zip};
use crate::quant::{ComputeDtype, FourBit, FourBitOptions, QuantFormat};
use crate::train::chat::{ChatTemplate, Message};
use crate::train::checkpoint::{load_checkpoint, save_checkpoint};
use crate::train::classification::{classifier_labels, classify_texts, evaluate_classification};
use crate::train::data::{DataOptions, Dataset};
use crate::train::eta::StepClock;
use crate::train::plan::{plan_memory, PlanInput};
use crate::train::preference::Objective;
use crate::train::recipe::{AdapterRecipe, TrainRecipe};
use crate::train::reward::evaluate_reward;
use crate::train::run::Run;
use crate::train::trainer::{evaluate, evaluate_preference, Trainer};

type JsResult<T> = std::result::Result<T, JsValue>;

/// The `name` of the `Error` a call rejects with once its device is lost
/// (`Error::DeviceLost`); other failures are plain `Error`s.
const DEVICE_LOST_ERROR: &str = "DeviceLostError";

pub(super) fn err<E: std::fmt::Display + 'static>(e: E) -> JsValue {
    let js = js_sys::Error::new(&e.to_string());
    if let Some(crate::Error::DeviceLost(_)) = (&e as &dyn std::any::Any).downcast_ref::<crate::Error>() {
        js.set_name(DEVICE_LOST_ERROR);
    }
    js.into()
}

pub(super) fn to_js<T: Serialize>(v: &T) -> JsResult<JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(err)
}

fn options<T: serde::de::DeserializeOwned + Default>(v: &JsValue) -> JsResult<T> {
    if v.is_undefined() || v.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(v.clone()).map_err(|e| err(format!("invalid options: {e}")))
}

fn callback(v: &JsValue, key: &str) -> Option<Function> {
    if v.is_undefined() || v.is_null() {
        return None;
    }
    Reflect::get(v, &JsValue::from_str(key)).ok().and_then(|f| f.dyn_into::<Function>().ok())
}

fn quant(name: Option<&str>) -> JsResult<QuantFormat> {
    name.unwrap_or("f32").parse::<QuantFormat>().map_err(err)
}

/// bitsandbytes' 4-bit options (`quantType`, `doubleQuant`).
fn four_bit(quant_type: Option<&str>, double_quant: Option<bool>) -> JsResult<FourBitOptions> {
    let kind = match quant_type.unwrap_or("nf4") {
        "nf4" => FourBit::Nf4,
        "fp4" => FourBit::Fp4,
        other => {
            return Err(err(crate::Error::invalid("load", format!("quantType {other:?}: expected \"nf4\" or \"fp4\""))))
        }
    };
    Ok(FourBitOptions { kind, double_quant: double_quant.unwrap_or(false) })
}

fn compute_dtype(name: Option<&str>) -> JsResult<ComputeDtype> {
    name.unwrap_or("f32").parse::<ComputeDtype>().map_err(err)
}

pub(super) fn now_seconds() -> f64 {
    js_sys::Date::now() / 1e3
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &Function, ms: i32) -> JsValue;
}

pub(super) async fn sleep(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        set_timeout(&resolve, ms);
    });
    let _ = JsFuture::from(p).await;
}

/// The training data as JSONL text: a string as it is, an array of records
/// one JSON line each.
pub(super) fn data_text(data: &JsValue) -> JsResult<String> {
    if let Some(s) = data.as_string() {
        return Ok(s);
    }
    let Some(array) = data.dyn_ref::<Array>() else {
        return Err(err("training data must be JSONL text or an array of records"));
    };
    let mut out = String::new();
    for (i, item) in array.iter().enumerate() {
        let line = js_sys::JSON::stringify(&item).map_err(|_| err(format!("record {i} cannot be written as JSON")))?;
        out.push_str(&String::from(line));
        out.push('\n');
    }
    Ok(out)
}

/// `Record<string, Uint8Array | ArrayBuffer>` → name → bytes.
fn byte_map(v: &JsValue) -> JsResult<BTreeMap<String, Vec<u8>>> {
    let obj = v.dyn_ref::<Object>().ok_or_else(|| err("expected an object of file name → bytes"))?;
    let mut out = BTreeMap::new();
    for entry in Object::entries(obj).iter() {
        let pair = Array::from(&entry);
        let name = pair.get(0).as_string().unwrap_or_default();
        let value = pair.get(1);
        let bytes = if value.is_instance_of::<Uint8Array>() || value.is_instance_of::<js_sys::ArrayBuffer>() {
            Uint8Array::new(&value).to_vec()
        } else {
            return Err(err(format!("{name}: expected a Uint8Array or an ArrayBuffer")));
        };
        out.insert(name, bytes);
    }
    Ok(out)
}

fn files_object(files: &[(String, Vec<u8>)]) -> JsResult<JsValue> {
    let obj = Object::new();
    for (name, bytes) in files {
        Reflect::set(&obj, &JsValue::from_str(name), &Uint8Array::from(bytes.as_slice()))?;
    }
    Ok(obj.into())
}

/// The GPU context: one per page (or worker).
#[wasm_bindgen(js_name = Gpu)]
pub struct WebGpu {
    gpu: Rc<Gpu>,
}

#[wasm_bindgen(js_class = Gpu)]
impl WebGpu {
    /// Requests a WebGPU adapter and device. Rejects with a readable message
    /// when the browser has no WebGPU. `opts.kernels` forces a matmul kernel
    /// family ("auto" by default: by the adapter).
    #[wasm_bindgen(unchecked_return_type = "Promise<Gpu>")]
    pub fn create(#[wasm_bindgen(unchecked_optional_param_type = "GpuOptions")] opts: JsValue) -> Promise {
        future_to_promise(async move {
            let o: GpuCreateOptions = options(&opts)?;
            let kernels = match o.kernels.as_deref() {
                None => crate::KernelFamily::Auto,
                Some(k) => k.parse().map_err(|e: String| err(format!("Gpu.create: {e}")))?,
            };
            let navigator =
                Reflect::get(&js_sys::global(), &JsValue::from_str("navigator")).unwrap_or(JsValue::UNDEFINED);
            let has_gpu = !navigator.is_undefined()
                && Reflect::get(&navigator, &JsValue::from_str("gpu")).is_ok_and(|g| !g.is_undefined() && !g.is_null());
            if !has_gpu {
                return Err(err(
                    "WebGPU is not available in this browser (navigator.gpu is missing). Use a recent Chrome, Edge or \
                     Safari, or enable WebGPU in your browser's settings.",
                ));
            }
            let gpu = Gpu::with_options(crate::GpuOptions { kernels, ..Default::default() }).await.map_err(|e| match e {
                crate::Error::NoAdapter(_) => err(
                    "WebGPU is present but found no usable GPU adapter (it may be disabled or blocklisted for this GPU; \
                     check chrome://gpu, or try another browser)",
                ),
                other => err(format!("WebGPU could not start: {other}")),
            })?;
            Ok(JsValue::from(WebGpu { gpu: Rc::new(gpu) }))
        })
    }

    /// The adapter's name, backend and limits.
    #[wasm_bindgen(unchecked_return_type = "GpuInfo")]
    pub fn info(&self) -> JsResult<JsValue> {
        let i = self.gpu.info();
        to_js(&serde_json::json!({
            "name": i.name, "backend": i.backend, "deviceType": i.device_type, "driver": i.driver,
            "subgroups": i.subgroups, "shaderF16": i.shader_f16, "maxBufferSize": i.max_buffer_size,
            "maxStorageBufferBindingSize": i.max_storage_buffer_binding_size,
            "maxStorageBuffersPerShaderStage": i.max_storage_buffers_per_shader_stage,
            "maxComputeWorkgroupStorageSize": i.max_compute_workgroup_storage_size,
            "maxComputeInvocationsPerWorkgroup": i.max_compute_invocations_per_workgroup,
            "kernels": match self.gpu.kernel_family() {
                crate::KernelFamily::Gpu => "gpu",
                _ => "cpu",
            },
        }))
    }

    /// Destroys the device (`GPUDevice.destroy()`), as a driver reset would
    /// lose it: `lost` resolves, and every later call on this `Gpu` or its
    /// models rejects with an `Error` named "DeviceLostError". Create a new
    /// `Gpu` to go on.
    pub fn destroy(&self) {
        self.gpu.destroy();
    }

    /// Whether the device is lost (destroyed, or reset by the driver or the
    /// browser); calls that touch the GPU then reject with a "DeviceLostError".
    #[wasm_bindgen(js_name = isLost)]
    pub fn is_lost(&self) -> bool {
        self.gpu.lost_reason().is_some()
    }

    /// Resolves with the reason ("Destroyed: …", "Unknown: …" and the
    /// browser's message) when the device is lost, at once if it already is;
    /// never while it works. Each read is a new Promise.
    #[wasm_bindgen(getter, unchecked_return_type = "Promise<string>")]
    pub fn lost(&self) -> Promise {
        let lost = self.gpu.lost();
        future_to_promise(async move {
            match lost.await {
                Some(reason) => Ok(JsValue::from_str(&reason)),
                // The Gpu was freed without being lost: nothing to report, ever.
                None => std::future::pending().await,
            }
        })
    }

    /// The autotuner's block choices for this adapter as JSON, to keep in the
    /// page's storage (IndexedDB, localStorage) and give back to
    /// `importTuning` next time, so a later visit need not time them again.
    #[wasm_bindgen(js_name = exportTuning)]
    pub fn export_tuning(&self) -> String {
        crate::kernels::tune::tuning_json(&self.gpu)
    }

    /// Takes choices saved by `exportTuning` (from this adapter); returns how
    /// many were valid here.
    #[wasm_bindgen(js_name = importTuning)]
    pub fn import_tuning(&self, json: &str) -> JsResult<u32> {
        crate::kernels::tune::import_tuning(&self.gpu, json).map(|n| n as u32).map_err(err)
    }

    /// Live and peak GPU bytes.
    #[wasm_bindgen(unchecked_return_type = "MemoryStats")]
    pub fn memory(&self) -> JsResult<JsValue> {
        let m = self.gpu.memory();
        to_js(&serde_json::json!({"liveBytes": m.live_bytes, "peakBytes": m.peak_bytes, "liveBuffers": m.live_buffers}))
    }

    /// The memory a training setup needs, from a model's `config.json`
    /// text, before loading anything; `fits` compares it with this device.
    #[wasm_bindgen(js_name = planMemory, unchecked_return_type = "MemoryPlan")]
    pub fn plan_memory(
        &self,
        config_json: &str,
        #[wasm_bindgen(unchecked_param_type = "PlanOptions")] opts: JsValue,
    ) -> JsResult<JsValue> {
        let o: PlanOptions = options(&opts)?;
        let config = Config::from_json(config_json.as_bytes()).map_err(err)?;
        let (adapter, run) = o.to_recipe().map_err(err)?;
        let adapter = adapter.plan_adapter(&config).map_err(err)?;
        let input = PlanInput {
            quant: quant(o.quant.as_deref())?,
            four_bit: four_bit(None, o.double_quant)?,
            adapter,
            batch: run.batch_size,
            seq: run.seq_len,
            grad_accum: run.grad_accum,
            checkpointing: run.gradient_checkpointing,
            kernels: self.gpu.kernel_family(),
        };
        let plan = plan_memory(&config, &input, self.gpu.max_binding_bytes());
        to_js(&serde_json::json!({
            "weightBytes": plan.weight_bytes, "doubleQuantSavedBytes": plan.double_quant_saved_bytes,
            "adapterBytes": plan.adapter_bytes,
            "optimizerBytes": plan.optimizer_bytes, "activationBytes": plan.activation_bytes,
            "totalBytes": plan.total_bytes, "largestBufferBytes": plan.largest_buffer_bytes,
            "bindingLimitBytes": plan.binding_limit_bytes, "fits": plan.fits,
        }))
    }
}

pub(super) struct ModelState {
    pub(super) gpu: Rc<Gpu>,
    pub(super) model: Model,
    /// The base model's name or path, as exported adapters name it.
    source: Option<String>,
    /// The files the model was loaded from (handles and a URL cost nothing to
    /// keep; buffers are kept as given), re-read by the GGUF export.
    files: WebFiles,
    pub(super) tokenizer: Option<Tokenizer>,
    /// `generation_config.json`'s settings (transformers' defaults without
    /// it): what `generate` does where its options are silent, and the
    /// end-of-sequence ids it stops at too.
    pub(super) generation: GenerationDefaults,
    pub(super) adapters: AdapterSet,
}

pub(super) fn busy<T>(r: std::result::Result<T, std::cell::BorrowError>) -> JsResult<T> {
    r.map_err(|_| {
        err("the model is busy with another call (a training step or generation); try again when it finishes")
    })
}

pub(super) fn busy_mut<T>(r: std::result::Result<T, std::cell::BorrowMutError>) -> JsResult<T> {
    r.map_err(|_| {
        err("the model is busy with another call (a training step or generation); try again when it finishes")
    })
}

/// A loaded, frozen model with its tokenizer and adapters.
#[wasm_bindgen(js_name = Model)]
pub struct WebModel {
    pub(super) state: Rc<RefCell<ModelState>>,
}

async fn load(gpu: Rc<Gpu>, files: WebFiles, opts: JsValue, source: Option<String>) -> JsResult<JsValue> {
    let o: LoadOptions = options(&opts)?;
    let source = o.name.clone().or(source);
    let format = quant(o.quant.as_deref())?;
    let compute = compute_dtype(o.compute_dtype.as_deref())?;
    let on_progress = callback(&opts, "onProgress");
    let mut report = |p: crate::model::llama::LoadProgress| {
        if let (Some(f), Ok(v)) = (
            &on_progress,
            to_js(&serde_json::json!({
                "tensor": p.tensor, "loadedBytes": p.loaded_bytes, "totalBytes": p.total_bytes, "note": p.note
            })),
        ) {
            let _ = f.call1(&JsValue::NULL, &v);
        }
    };
    let four_bit = four_bit(o.quant_type.as_deref(), o.double_quant)?;
    let mut model = Model::load_with_options(&gpu, &files, format, four_bit, &mut report).await.map_err(err)?;
    // Without a computeDtype, a bitsandbytes folder's bnb_4bit_compute_dtype (where the GPU has shader-f16).
    match (o.compute_dtype.as_deref(), model.config.bnb_compute_dtype()) {
        (None, Some(asked)) => {
            if model.set_compute_dtype(&gpu, asked).is_err() {
                model.set_compute_dtype(&gpu, ComputeDtype::F32).map_err(err)?;
            }
        }
        _ => {
            model.set_compute_dtype(&gpu, compute).map_err(err)?;
        }
    }
    let tokenizer = match crate::model::source::ModelFiles::try_open(&files, "tokenizer.json").await.map_err(err)? {
        Some(_) => Some(Tokenizer::load(&files).await.map_err(err)?),
        None => None,
    };
    if let Some(t) = &tokenizer {
        t.check_model(&model.config).map_err(err)?;
    }
    let generation = Config::generation_defaults(&files).await.map_err(err)?;
    let state = ModelState { gpu, model, source, files, tokenizer, generation, adapters: AdapterSet::new() };
    Ok(JsValue::from(WebModel { state: Rc::new(RefCell::new(state)) }))
}

impl WebModel {
    /// A fresh adapter from `recipe` (seeded by `seed`) under `name`.
    /// Adds a fresh adapter of `recipe`, with the trainable tokens `texts`
    /// (by their text, resolved with the model's tokenizer).
    fn add_fresh(&self, name: &str, recipe: AdapterRecipe, texts: &[String], seed: u64) -> JsResult<()> {
        let mut st = busy_mut(self.state.try_borrow_mut())?;
        let recipe = recipe.with_token_texts(texts, st.tokenizer.as_ref()).map_err(err)?;
        let adapter = recipe.build(&st.gpu, &st.model, st.tokenizer.as_ref(), st.source.clone(), seed).map_err(err)?;
        st.adapters.insert(name, adapter).map_err(err)
    }
}

#[wasm_bindgen(js_class = Model)]
impl WebModel {
    /// Loads from a base URL (`https://huggingface.co/<repo>/resolve/main/`
    /// works), reading each tensor with a Range request.
    #[wasm_bindgen(js_name = fromUrl, unchecked_return_type = "Promise<Model>")]
    pub fn from_url(
        gpu: &WebGpu,
        base_url: &str,
        #[wasm_bindgen(unchecked_param_type = "LoadOptions")] opts: JsValue,
    ) -> Promise {
        future_to_promise(load(
            gpu.gpu.clone(),
            WebFiles::url(base_url),
            opts,
            Some(crate::model::source::url_model_name(base_url)),
        ))
    }

    /// Loads from picked or dropped files (a model folder's files).
    #[wasm_bindgen(js_name = fromFiles, unchecked_return_type = "Promise<Model>")]
    pub fn from_files(
        gpu: &WebGpu,
        #[wasm_bindgen(unchecked_param_type = "File[]")] files: Array,
        #[wasm_bindgen(unchecked_param_type = "LoadOptions")] opts: JsValue,
    ) -> Promise {
        let mut map = BTreeMap::new();
        let mut folder = None;
        for f in files.iter() {
            if let Ok(file) = f.dyn_into::<web_sys::File>() {
                // A picked folder's files say where they came from: "folder/config.json".
                let path = Reflect::get(&file, &"webkitRelativePath".into())
                    .ok()
                    .and_then(|p| p.as_string())
                    .unwrap_or_default();
                folder = folder.or_else(|| path.split_once('/').map(|(dir, _)| dir.to_string()));
                map.insert(file.name(), file);
            }
        }
        future_to_promise(load(gpu.gpu.clone(), WebFiles::Files(map), opts, folder))
    }

    /// Loads from bytes in memory: file name → bytes.
    #[wasm_bindgen(js_name = fromBuffers, unchecked_return_type = "Promise<Model>")]
    pub fn from_buffers(
        gpu: &WebGpu,
        #[wasm_bindgen(unchecked_param_type = "Record<string, Uint8Array | ArrayBuffer>")] buffers: JsValue,
        #[wasm_bindgen(unchecked_param_type = "LoadOptions")] opts: JsValue,
    ) -> Promise {
        let gpu = gpu.gpu.clone();
        future_to_promise(async move {
            let map = byte_map(&buffers)?.into_iter().map(|(n, b)| (n.clone(), MemorySource::new(n, b))).collect();
            load(gpu, WebFiles::Memory(map), opts, None).await
        })
    }

    #[wasm_bindgen(unchecked_return_type = "ModelInfo")]
    pub fn info(&self) -> JsResult<JsValue> {
        let st = busy(self.state.try_borrow())?;
        let c = &st.model.config;
        to_js(&ModelInfo {
            model_type: format!("{:?}", c.model_type).to_lowercase(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            layers: c.num_hidden_layers,
            parameters: c.tensor_names().iter().map(|t| t.shape.iter().product::<usize>() as u64).sum(),
            quant: match st.model.format {
                QuantFormat::F32 => "f32",
                QuantFormat::F16 => "f16",
                QuantFormat::Bf16 => "bf16",
                QuantFormat::Q8_0 => "q8",
                QuantFormat::Nf4 => "nf4",
            },
            compute_dtype: st.model.compute_dtype().name(),
            weight_bytes: st.model.bytes(),
            max_position_embeddings: c.max_position_embeddings,
            has_tokenizer: st.tokenizer.is_some(),
            has_chat_template: st.tokenizer.as_ref().is_some_and(|t| t.chat_template().is_some()),
            chat_template_variables: st
                .tokenizer
                .as_ref()
                .and_then(|t| ChatTemplate::from_tokenizer(t).ok().flatten())
                .map_or_else(Vec::new, |t| t.variables()),
            generation: GenerationInfo {
                do_sample: st.generation.do_sample,
                temperature: st.generation.temperature,
                top_k: st.generation.top_k,
                top_p: st.generation.top_p,
                min_p: st.generation.min_p,
                typical_p: st.generation.typical_p,
                epsilon_cutoff: st.generation.epsilon_cutoff,
                eta_cutoff: st.generation.eta_cutoff,
                repetition_penalty: st.generation.repetition_penalty,
                no_repeat_ngram_size: st.generation.no_repeat_ngram_size,
                min_new_tokens: st.generation.min_new_tokens,
                min_length: st.generation.min_length,
                stop_strings: st.generation.stop_strings.clone(),
                bad_words_ids: st.generation.bad_words_ids.clone(),
                suppress_tokens: st.generation.suppress_tokens.clone(),
                begin_suppress_tokens: st.generation.begin_suppress_tokens.clone(),
                unsupported: st.generation.unsupported.clone(),
                max_new_tokens: st.generation.max_new_tokens,
                max_length: st.generation.max_length,
            },
        })
    }

    /// Computes the frozen Linears in "f32" or "f16" from now on, and returns
    /// the dtype in effect ("f32" where the GPU has no shader-f16 or the base
    /// is f32). Adapters and their training state are untouched.
    #[wasm_bindgen(js_name = setComputeDtype, unchecked_return_type = "ComputeDtype")]
    pub fn set_compute_dtype(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ComputeDtype")] dtype: &str,
    ) -> JsResult<String> {
        let dtype = compute_dtype(Some(dtype))?;
        let mut st = busy_mut(self.state.try_borrow_mut())?;
        let st = &mut *st;
        Ok(st.model.set_compute_dtype(&st.gpu, dtype).map_err(err)?.name().to_string())
    }

    /// Adds a fresh LoRA adapter (PEFT's defaults: r 8, alpha 8, q_proj and v_proj).
    #[wasm_bindgen(js_name = addLora)]
    pub fn add_lora(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "LoraOptions")] opts: JsValue,
    ) -> JsResult<()> {
        let o: LoraOptions = options(&opts)?;
        let texts = o.trainable_tokens.clone().unwrap_or_default();
        self.add_fresh(name, o.to_recipe().map_err(err)?, &texts, o.seed())
    }

    /// Adds a LoRA adapter whose init replaces the base weights, as PEFT's
    /// `init_lora_weights` = "pissa", "pissa_niter_K", "olora" or "loftq" do:
    /// the base becomes the residual (or LoftQ's quantized residual), recomputed
    /// from the files the model was loaded from, and stays so until the model
    /// is loaded again. Refused while the model holds other adapters, which
    /// were made against the old base. Its exported files are a plain LoRA of
    /// the original model (PEFT's `path_initial_model_for_weight_conversion`).
    #[wasm_bindgen(js_name = initLora, unchecked_return_type = "Promise<void>")]
    pub fn init_lora(
        &self,
        name: String,
        #[wasm_bindgen(unchecked_param_type = "LoraOptions")] opts: JsValue,
    ) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let o: LoraOptions = options(&opts)?;
            let recipe = o.to_base_recipe().map_err(err)?;
            let mut st = busy_mut(state.try_borrow_mut())?;
            if let Some(other) = st.adapters.names().first() {
                return Err(err(format!(
                    "initLora replaces the base weights, which adapter {other:?} was made against: remove the model's adapters first"
                )));
            }
            let ModelState { gpu, model, files, tokenizer, source, adapters, .. } = &mut *st;
            let adapter = recipe
                .build_adjusting_base(gpu, model, Some(&*files), tokenizer.as_ref(), source.clone(), o.seed())
                .await
                .map_err(err)?;
            adapters.insert(&name, adapter).map_err(err)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Adds a fresh AdaLoRA adapter (PEFT's `AdaLoraConfig` defaults on q_proj
    /// and v_proj: init_r 12, target_r 8); `totalStep`, the steps the run will
    /// take, is required, as in PEFT.
    #[wasm_bindgen(js_name = addAdaLora)]
    pub fn add_adalora(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "AdaLoraOptions")] opts: JsValue,
    ) -> JsResult<()> {
        let o: AdaLoraOptions = options(&opts)?;
        self.add_fresh(name, o.to_recipe().map_err(err)?, &[], o.seed())
    }

    /// Adds a fresh (IA)³ adapter (PEFT's `IA3Config` defaults for the model: vectors of ones).
    #[wasm_bindgen(js_name = addIa3)]
    pub fn add_ia3(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "Ia3Options")] opts: JsValue,
    ) -> JsResult<()> {
        let o: Ia3Options = options(&opts)?;
        self.add_fresh(name, o.to_recipe().map_err(err)?, &[], o.seed())
    }

    /// Adds PEFT's TRAINABLE_TOKENS by itself: the embedding rows of `tokenIndices`, starting as the
    /// embedding's own (a tied lm_head's rows follow).
    #[wasm_bindgen(js_name = addTrainableTokens)]
    pub fn add_trainable_tokens(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "TrainableTokensOptions")] opts: JsValue,
    ) -> JsResult<()> {
        let o: TrainableTokensOptions = options(&opts)?;
        let texts = o.tokens.clone().unwrap_or_default();
        self.add_fresh(name, o.to_recipe().map_err(err)?, &texts, crate::train::recipe::DEFAULT_SEED)
    }

    /// Adds a fresh prompt-tuning adapter (20 virtual tokens, PEFT's RANDOM init, unless told).
    #[wasm_bindgen(js_name = addPromptTuning)]
    pub fn add_prompt_tuning(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "PromptTuningOptions")] opts: JsValue,
    ) -> JsResult<()> {
        let o: PromptTuningOptions = options(&opts)?;
        self.add_fresh(name, o.to_recipe().map_err(err)?, &[], o.seed())
    }

    /// Adds a fresh prefix-tuning adapter (20 virtual tokens unless told; N(0, 1) as PEFT, or with
    /// `prefixProjection` PEFT's MLP that makes it).
    #[wasm_bindgen(js_name = addPrefixTuning)]
    pub fn add_prefix_tuning(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "PrefixTuningOptions")] opts: JsValue,
    ) -> JsResult<()> {
        let o: PrefixTuningOptions = options(&opts)?;
        self.add_fresh(name, o.to_recipe().map_err(err)?, &[], o.seed())
    }

    /// Adds a fresh P-tuning adapter (20 virtual tokens from PEFT's MLP prompt encoder, unless told).
    #[wasm_bindgen(js_name = addPTuning)]
    pub fn add_p_tuning(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "PTuningOptions")] opts: JsValue,
    ) -> JsResult<()> {
        let o: PTuningOptions = options(&opts)?;
        self.add_fresh(name, o.to_recipe().map_err(err)?, &[], o.seed())
    }

    /// Adds a fresh bottleneck adapter (AdapterHub's preset for the method).
    #[wasm_bindgen(js_name = addBottleneck)]
    pub fn add_bottleneck(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "BottleneckOptions")] opts: JsValue,
    ) -> JsResult<()> {
        let o: BottleneckOptions =
            serde_wasm_bindgen::from_value(opts).map_err(|e| err(format!("invalid options: {e}")))?;
        self.add_fresh(name, o.to_recipe().map_err(err)?, &[], o.seed())
    }

    /// Loads an adapter folder's files (PEFT or AdapterHub) or a .zip of them.
    #[wasm_bindgen(js_name = importAdapter, unchecked_return_type = "Promise<void>")]
    pub fn import_adapter(
        &self,
        name: String,
        #[wasm_bindgen(unchecked_param_type = "AdapterFiles | Uint8Array")] files: JsValue,
    ) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let list: Vec<(String, Vec<u8>)> = if files.is_instance_of::<Uint8Array>() {
                from_zip(&Uint8Array::new(&files).to_vec()).map_err(err)?
            } else {
                byte_map(&files)?.into_iter().collect()
            };
            let map = list.into_iter().map(|(n, b)| (n.clone(), MemorySource::new(n, b))).collect();
            let adapter = {
                let st = busy(state.try_borrow())?;
                Adapter::load(&st.gpu, &WebFiles::Memory(map), &st.model.config).await.map_err(err)?
            };
            busy_mut(state.try_borrow_mut())?.adapters.insert(&name, adapter).map_err(err)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The adapter's files as its library writes them.
    #[wasm_bindgen(js_name = exportAdapter, unchecked_return_type = "Promise<AdapterFiles>")]
    pub fn export_adapter(&self, name: String) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let st = busy(state.try_borrow())?;
            let a = st.adapters.get(&name).ok_or_else(|| err(format!("no adapter named {name:?}")))?;
            files_object(&a.to_files(&st.gpu, &st.model.config).await.map_err(err)?)
        })
    }

    /// The adapter's files as one .zip.
    #[wasm_bindgen(js_name = exportAdapterZip, unchecked_return_type = "Promise<Uint8Array>")]
    pub fn export_adapter_zip(&self, name: String) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let st = busy(state.try_borrow())?;
            let a = st.adapters.get(&name).ok_or_else(|| err(format!("no adapter named {name:?}")))?;
            let zip = to_zip(&a.to_files(&st.gpu, &st.model.config).await.map_err(err)?).map_err(err)?;
            Ok(Uint8Array::from(zip.as_slice()).into())
        })
    }

    /// The adapter `name` (plain LoRA) as a GGUF file for llama.cpp: merged into
    /// the model (`kind: "merged"`, f16 or q8_0; the base weights re-read from
    /// the files the model was loaded from, not the GPU's copy) or alone
    /// (`kind: "lora"`). The file goes to `onChunk` in order, 4 MiB at a time
    /// (`chunkBytes`); resolves to its length in bytes.
    #[wasm_bindgen(js_name = exportGguf, unchecked_return_type = "Promise<number>")]
    pub fn export_gguf(
        &self,
        name: String,
        #[wasm_bindgen(unchecked_param_type = "GgufOptions")] opts: JsValue,
        #[wasm_bindgen(unchecked_param_type = "(chunk: Uint8Array) => void")] on_chunk: Function,
    ) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let o: super::gguf::GgufExportOptions = options(&opts)?;
            let st = busy(state.try_borrow())?;
            let a = st.adapters.get(&name).ok_or_else(|| err(format!("no adapter named {name:?}")))?;
            let adapter = a.to_files(&st.gpu, &st.model.config).await.map_err(err)?;
            let len = super::gguf::export(&st.files, st.source.as_deref(), adapter, o, on_chunk).await.map_err(err)?;
            Ok(JsValue::from_f64(len as f64))
        })
    }

    /// Makes `name` the active adapter (null: none).
    #[wasm_bindgen(js_name = setActiveAdapter)]
    pub fn set_active_adapter(&self, name: Option<String>) -> JsResult<()> {
        busy_mut(self.state.try_borrow_mut())?.adapters.set_active(name.as_deref()).map_err(err)
    }

    #[wasm_bindgen(js_name = activeAdapter)]
    pub fn active_adapter(&self) -> JsResult<Option<String>> {
        Ok(busy(self.state.try_borrow())?.adapters.active_name().map(str::to_string))
    }

    #[wasm_bindgen(js_name = adapterNames)]
    pub fn adapter_names(&self) -> JsResult<Vec<String>> {
        Ok(busy(self.state.try_borrow())?.adapters.names())
    }

    #[wasm_bindgen(js_name = removeAdapter)]
    pub fn remove_adapter(&self, name: &str) -> JsResult<()> {
        busy_mut(self.state.try_borrow_mut())?.adapters.remove(name).map(|_| ()).map_err(err)
    }

    /// Starts training the adapter `name` on `data`.
    #[wasm_bindgen(js_name = startTraining)]
    pub fn start_training(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "TrainingData")] data: JsValue,
        #[wasm_bindgen(unchecked_param_type = "TrainOptions")] opts: JsValue,
    ) -> JsResult<TrainRun> {
        let o: TrainOptions = serde_wasm_bindgen::from_value(opts).map_err(|e| err(format!("invalid options: {e}")))?;
        let recipe = o.to_recipe().map_err(err)?;
        let trainer = {
            let mut guard = busy_mut(self.state.try_borrow_mut())?;
            let st = &mut *guard;
            let stored = st.adapters.get_mut(name).ok_or_else(|| err(format!("no adapter named {name:?}")))?;
            let trainer = Trainer::new(&st.gpu, stored.clone(), recipe.optimizer.clone(), recipe.seed).map_err(err)?;
            // The stored adapter is the trainer's (the same GPU tensors), with the state
            // training keeps beside them (AdaLoRA's allocator, whose rank pattern the files hold).
            *stored = trainer.adapter.clone();
            trainer
        };
        self.run(name, trainer, &data, &recipe, None)
    }

    /// Continues a run from `saveCheckpoint()` bytes; the adapter is stored
    /// (or replaced) under `name`.
    #[wasm_bindgen(js_name = resumeTraining)]
    pub fn resume_training(
        &self,
        name: &str,
        checkpoint: &[u8],
        #[wasm_bindgen(unchecked_param_type = "TrainingData")] data: JsValue,
        #[wasm_bindgen(unchecked_param_type = "TrainOptions")] opts: JsValue,
    ) -> JsResult<TrainRun> {
        let o: TrainOptions = serde_wasm_bindgen::from_value(opts).map_err(|e| err(format!("invalid options: {e}")))?;
        let recipe = o.to_recipe().map_err(err)?;
        let mut st = busy_mut(self.state.try_borrow_mut())?;
        let (trainer, progress) = load_checkpoint(&st.gpu, checkpoint, &st.model.config).map_err(err)?;
        let _ = st.adapters.remove(name);
        st.adapters.insert(name, trainer.adapter.clone()).map_err(err)?;
        drop(st);
        self.run(name, trainer, &data, &recipe, Some(progress))
    }

    fn run(
        &self,
        name: &str,
        mut trainer: Trainer,
        data: &JsValue,
        recipe: &TrainRecipe,
        progress: Option<serde_json::Value>,
    ) -> JsResult<TrainRun> {
        let st = busy(self.state.try_borrow())?;
        let mut recipe = recipe.clone();
        recipe.set_pad_id(st.tokenizer.as_ref());
        if let Objective::Classification(loss) = &mut recipe.objective {
            loss.num_labels = trainer.adapter.num_labels(); // the adapter's score head says how many
        }
        let recipe = &recipe;
        crate::train::reward::check_adapter_for(&recipe.objective, &trainer.adapter).map_err(err)?;
        trainer.gradient_checkpointing = recipe.gradient_checkpointing;
        trainer.neftune_noise_alpha = recipe.neftune_noise_alpha;
        trainer.disable_dropout = recipe.disables_dropout();
        trainer.objective = recipe.objective;
        // Prompt tuning's virtual tokens take positions of their own: rows are cut to fit beside them.
        let before = trainer.adapter.virtual_tokens() + trainer.adapter.prefix_len();
        recipe.check_positions_before(before).map_err(err)?;
        let positions = st.model.config.max_position_embeddings.saturating_sub(before);
        let opts = recipe.data_options(positions);
        let dataset = dataset(&st, "training data", data, recipe, &opts)?;
        let mut config = recipe.run_config();
        if let Some(p) = &progress {
            let total = p.get("total_steps").and_then(serde_json::Value::as_u64);
            config.steps = total.or(config.steps);
        }
        let mut run = Run::new(dataset, trainer, &config).map_err(err)?;
        if let Some(p) = &progress {
            run.seek(Run::position_from(p).map_err(err)?).map_err(err)?;
        }
        Ok(TrainRun {
            model: self.state.clone(),
            run: Rc::new(RefCell::new(run)),
            name: name.to_string(),
            paused: Rc::new(Cell::new(false)),
            cancelled: Rc::new(Cell::new(false)),
            seconds: Rc::new(Cell::new(StepClock::default())),
        })
    }

    /// Loss, perplexity and TRL's entropy and token accuracy on held-out
    /// data, as `SFTTrainer.evaluate()` reports them, with the adapter `name`
    /// (`adapter: null` for the base model; absent: the active one).
    #[wasm_bindgen(unchecked_return_type = "Promise<EvalResult>")]
    pub fn evaluate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "TrainingData")] data: JsValue,
        #[wasm_bindgen(unchecked_param_type = "EvalOptions")] opts: JsValue,
    ) -> Promise {
        future_to_promise(evaluate_held_out(self.state.clone(), data, opts, false))
    }

    /// A preference objective's loss and TRL's metrics on held-out pairs (KTO:
    /// examples), as TRL's `evaluate()` reports them, with the adapter `name`
    /// (`adapter: null` for the base model; absent: the active one).
    #[wasm_bindgen(js_name = evaluatePreference, unchecked_return_type = "Promise<PreferenceEvalResult>")]
    pub fn evaluate_preference(
        &self,
        #[wasm_bindgen(unchecked_param_type = "TrainingData")] data: JsValue,
        #[wasm_bindgen(unchecked_param_type = "PreferenceEvalOptions")] opts: JsValue,
    ) -> Promise {
        future_to_promise(evaluate_held_out(self.state.clone(), data, opts, true))
    }

    /// A reward model's score of each text (a string, tokenized as the
    /// reward trainer tokenizes an answer: special tokens, the eos
    /// appended) or conversation (an array of messages, rendered with the
    /// chat template), with the adapter `opts.adapter` (absent: the active
    /// one), which must be a SEQ_CLS LoRA (`addLora({taskType: "SEQ_CLS"})`
    /// trained with objective "reward").
    #[wasm_bindgen(unchecked_return_type = "Promise<number[]>")]
    pub fn score(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(string | ChatMessage[])[]")] texts: JsValue,
        #[wasm_bindgen(unchecked_param_type = "ScoreOptions | undefined")] opts: JsValue,
    ) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let st = busy(state.try_borrow())?;
            let adapter = chosen_adapter(&st, &opts)?;
            crate::train::reward::check_reward_model(&st.model, adapter, "score").map_err(err)?;
            let tok =
                st.tokenizer.as_ref().ok_or_else(|| err("this model has no tokenizer.json: scoring needs one"))?;
            if !Array::is_array(&texts) {
                return Err(err("score takes an array of texts (strings, or arrays of {role, content} messages)"));
            }
            let mut ids = Vec::new();
            for (i, item) in Array::from(&texts).iter().enumerate() {
                let row = match item.as_string() {
                    Some(text) => crate::train::reward::text_ids(tok, "", &text).map_err(err)?,
                    None => {
                        let text = template(tok, None)?.render(&messages(&item)?, false).map_err(err)?;
                        tok.encode(&text, false).map_err(err)?
                    }
                };
                if row.is_empty() {
                    return Err(err(format!("text {i} has no tokens")));
                }
                ids.push(row);
            }
            let pad = crate::train::recipe::pad_id(Some(tok));
            let scores =
                crate::train::reward::score_sequences(&st.gpu, &st.model, adapter, &ids, pad).await.map_err(err)?;
            to_js(&scores)
        })
    }

    /// A sequence classifier's verdict on each text (tokenized as its training
    /// data: special tokens, cut to the model's positions): the label of the
    /// highest logit, its score as transformers' text-classification
    /// pipeline gives it (softmax, sigmoid for multi-label, the logit for
    /// regression) and the logits, with the adapter `opts.adapter` (absent:
    /// the active one), a SEQ_CLS LoRA trained with objective "classification".
    #[wasm_bindgen(unchecked_return_type = "Promise<Prediction[]>")]
    pub fn classify(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string[]")] texts: JsValue,
        #[wasm_bindgen(unchecked_param_type = "ClassifyOptions | undefined")] opts: JsValue,
    ) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let o: EvalOptions = options(&opts)?;
            let problem = EvalOptions { objective: Some("classification".into()), ..o }.to_recipe().map_err(err)?;
            let problem_type = match problem.objective {
                Objective::Classification(loss) => loss.problem_type,
                _ => None,
            };
            let st = busy(state.try_borrow())?;
            let adapter = chosen_adapter(&st, &opts)?;
            classifier_labels(&st.model, adapter).map_err(err)?;
            let tok =
                st.tokenizer.as_ref().ok_or_else(|| err("this model has no tokenizer.json: classifying needs one"))?;
            let texts: Vec<String> = serde_wasm_bindgen::from_value(texts)
                .map_err(|e| err(format!("classify takes an array of strings: {e}")))?;
            let max = st.model.config.max_position_embeddings;
            let target = (&*st.gpu, &st.model, adapter);
            let verdicts = classify_texts(target, tok, &texts, problem_type, max).await.map_err(err)?;
            to_js(&verdicts)
        })
    }

    /// A classifier's loss on labelled held-out texts, as transformers'
    /// `Trainer.evaluate()` reports it, and its accuracy (single-label), with
    /// the adapter `name` (absent: the active one).
    #[wasm_bindgen(js_name = evaluateClassifier, unchecked_return_type = "Promise<ClassifierEvalResult>")]
    pub fn evaluate_classifier(
        &self,
        #[wasm_bindgen(unchecked_param_type = "TrainingData")] data: JsValue,
        #[wasm_bindgen(unchecked_param_type = "ClassifierEvalOptions | undefined")] opts: JsValue,
    ) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let o: EvalOptions = options(&opts)?;
            let mut recipe = EvalOptions { objective: Some("classification".into()), ..o }.to_recipe().map_err(err)?;
            let st = busy(state.try_borrow())?;
            recipe.set_pad_id(st.tokenizer.as_ref());
            let adapter = chosen_adapter(&st, &opts)?;
            let labels = classifier_labels(&st.model, adapter).map_err(err)?;
            let loss = match &mut recipe.objective {
                Objective::Classification(loss) => {
                    loss.num_labels = labels;
                    *loss
                }
                other => return Err(err(format!("evaluateClassifier measures a classifier, not {}", other.name()))),
            };
            let dopts = recipe.eval_data_options(st.model.config.max_position_embeddings);
            let ds = dataset(&st, "evaluation data", &data, &recipe, &dopts)?;
            let e = evaluate_classification(&st.gpu, &st.model, adapter, &ds.epoch(0), &loss).await.map_err(err)?;
            to_js(&serde_json::json!({"loss": e.loss, "accuracy": e.accuracy, "rows": e.rows,
                                      "batches": ds.batches_per_epoch()}))
        })
    }

    /// Generates a continuation of `prompt` (a string), or the assistant's next
    /// turn of a conversation (an array of messages, rendered with the
    /// tokenizer's chat template), streaming text to `onToken`. An aborted
    /// `signal`, or `onToken` returning `false`, ends it after the token in
    /// flight; the result then has the text so far and `stopReason` "stopped".
    #[wasm_bindgen(unchecked_return_type = "Promise<GenerateResult>")]
    pub fn generate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | ChatMessage[]")] prompt: JsValue,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions")] opts: JsValue,
    ) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let o: GenerateOptions = options(&opts)?;
            let on_token = callback(&opts, "onToken");
            let signal = if opts.is_object() { Reflect::get(&opts, &"signal".into())? } else { JsValue::UNDEFINED };
            let aborted =
                || signal.is_object() && Reflect::get(&signal, &"aborted".into()).is_ok_and(|a| a.is_truthy());
            let st = busy(state.try_borrow())?;
            let tok =
                st.tokenizer.as_ref().ok_or_else(|| err("this model has no tokenizer.json: generation needs one"))?;
            let adapter = chosen_adapter(&st, &opts)?;
            let ids = match prompt.as_string() {
                Some(text) if o.chat.unwrap_or(false) => {
                    let chat = chat_prompt(tok, &[Message::new("user", text)], o.chat_template_kwargs.as_ref())?;
                    tok.encode(&chat, false).map_err(err)?
                }
                Some(text) => tok.encode(&text, true).map_err(err)?,
                // The template writes the bos itself, as apply_chat_template(tokenize=True).
                None => {
                    let chat = chat_prompt(tok, &messages(&prompt)?, o.chat_template_kwargs.as_ref())?;
                    tok.encode(&chat, false).map_err(err)?
                }
            };
            // The options, else the model's own settings (generation_config.json).
            let choices = GenerationChoices {
                greedy: o.greedy,
                temperature: o.temperature,
                top_k: o.top_k,
                top_p: o.top_p,
                min_p: o.min_p,
                typical_p: o.typical_p,
                epsilon_cutoff: o.epsilon_cutoff,
                eta_cutoff: o.eta_cutoff,
                repetition_penalty: o.repetition_penalty,
                no_repeat_ngram_size: o.no_repeat_ngram_size,
                min_new_tokens: o.min_new_tokens,
                bad_words_ids: o.bad_words_ids,
                suppress_tokens: o.suppress_tokens,
                seed: o.seed,
            };
            let new_tokens = o.max_new_tokens.or_else(|| st.generation.new_tokens(ids.len())).unwrap_or(64);
            let mut config = GenerationConfig::from_defaults(&st.generation, new_tokens).with_choices(&choices);
            config.eos_token_ids.extend(&st.model.config.eos_token_ids);
            config.eos_token_ids.extend(tok.eos_ids());
            let virtual_tokens = adapter.map_or(0, |a| a.virtual_tokens() + a.prefix_len());
            let budget = st.model.config.max_position_embeddings.saturating_sub(ids.len() + virtual_tokens);
            config.max_new_tokens = config.max_new_tokens.min(budget);
            // The options' stop strings, else the model's.
            let stop_strings = o.stop_strings.map_or_else(|| st.generation.stop_strings.clone(), OneOrMany::into_vec);
            let mut stop = StopStrings::new(tok, &stop_strings, &ids).map_err(err)?;
            let mut stop_string = false;
            let mut decoder = tok.stream_decoder(true);
            let mut text = String::new();
            let mut failed = None;
            // Stopped: by onToken (after its token) or by the signal (before the token in hand, dropped).
            let (mut stopped, mut dropped) = (aborted(), false);
            if stopped {
                config.max_new_tokens = 0;
            }
            let start = now_seconds();
            let mut out = st
                .model
                .generate_adapted(&st.gpu, &ids, &config, hooks_of(adapter), |id| {
                    if aborted() {
                        (stopped, dropped) = (true, true);
                        return false;
                    }
                    match decoder.step(id) {
                        Ok(Some(piece)) => {
                            text.push_str(&piece);
                            let go_on =
                                on_token.as_ref().map_or(Ok(JsValue::TRUE), |f| f.call1(&JsValue::NULL, &piece.into()));
                            stopped = go_on.is_ok_and(|v| v == JsValue::FALSE);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    }
                    match stop.push(id) {
                        Ok(hit) => stop_string = hit,
                        Err(e) => failed = Some(e),
                    }
                    !stopped && !stop_string && failed.is_none()
                })
                .await
                .map_err(err)?;
            if let Some(e) = failed {
                return Err(err(e));
            }
            if dropped {
                out.pop();
            }
            let tail = decoder.flush().map_err(err)?;
            if let (Some(f), false, false) = (&on_token, tail.is_empty(), stopped) {
                let _ = f.call1(&JsValue::NULL, &JsValue::from_str(&tail));
            }
            text.push_str(&tail);
            let stop_reason = match out.last() {
                _ if stopped => "stopped",
                _ if stop_string => "stopString",
                Some(id) if config.eos_token_ids.contains(id) => "eos",
                _ => "maxTokens",
            };
            to_js(&GenerateResult {
                text,
                token_ids: out,
                prompt_tokens: ids.len(),
                stop_reason,
                seconds: now_seconds() - start,
            })
        })
    }

    /// The conversation as the model sees it: transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)`
    /// (with `addGenerationPrompt` false, the turns alone, and any last role;
    /// `kwargs`: the template's own variables, such as Qwen3's `enable_thinking`).
    #[wasm_bindgen(js_name = applyChatTemplate)]
    pub fn apply_chat_template(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ChatMessage[]")] messages: JsValue,
        #[wasm_bindgen(js_name = addGenerationPrompt)] add_generation_prompt: Option<bool>,
        kwargs: Option<Object>,
    ) -> JsResult<String> {
        let st = busy(self.state.try_borrow())?;
        let tok = st.tokenizer.as_ref().ok_or_else(|| err("this model has no tokenizer.json: no chat template"))?;
        let messages = self::messages(&messages)?;
        let kwargs: Option<serde_json::Map<String, serde_json::Value>> = kwargs
            .map(|k| serde_wasm_bindgen::from_value(k.into()).map_err(|e| err(format!("kwargs: {e}"))))
            .transpose()?;
        match add_generation_prompt {
            Some(false) => template(tok, kwargs.as_ref())?.render(&messages, false).map_err(err),
            _ => chat_prompt(tok, &messages, kwargs.as_ref()),
        }
    }
}

/// The tokenizer's chat template with the caller's `kwargs`, or an error
/// saying the model has none.
fn template(tok: &Tokenizer, kwargs: Option<&serde_json::Map<String, serde_json::Value>>) -> JsResult<ChatTemplate> {
    let t = ChatTemplate::from_tokenizer(tok).map_err(err)?.ok_or_else(|| {
        err("this model's tokenizer has no chat_template (tokenizer_config.json): chat needs one; plain text prompts still work")
    })?;
    match kwargs {
        Some(k) => t.with_kwargs(k).map_err(err),
        None => Ok(t),
    }
}

/// `messages` rendered to be answered by the assistant.
fn chat_prompt(
    tok: &Tokenizer,
    messages: &[Message],
    kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
) -> JsResult<String> {
    template(tok, kwargs)?.generation_prompt(messages).map_err(err)
}

/// A `ChatMessage[]` from JavaScript.
fn messages(v: &JsValue) -> JsResult<Vec<Message>> {
    if !Array::is_array(v) {
        return Err(err("the prompt must be a string or an array of {role, content} messages"));
    }
    serde_wasm_bindgen::from_value(v.clone()).map_err(|e| err(format!("invalid messages: {e}")))
}

/// `opts.adapter`: absent → the active adapter, null → none, a name → that one.
fn chosen_adapter<'s>(st: &'s ModelState, opts: &JsValue) -> JsResult<Option<&'s Adapter>> {
    if opts.is_undefined() || opts.is_null() {
        return Ok(st.adapters.active());
    }
    let v = Reflect::get(opts, &JsValue::from_str("adapter")).unwrap_or(JsValue::UNDEFINED);
    if v.is_undefined() {
        Ok(st.adapters.active())
    } else if v.is_null() {
        Ok(None)
    } else {
        let name = v.as_string().ok_or_else(|| err("adapter must be a name or null"))?;
        st.adapters.get(&name).map(Some).ok_or_else(|| err(format!("no adapter named {name:?}")))
    }
}

fn dataset(st: &ModelState, what: &str, data: &JsValue, recipe: &TrainRecipe, opts: &DataOptions) -> JsResult<Dataset> {
    let text = data_text(data)?;
    recipe.dataset(what, text.as_bytes(), st.tokenizer.as_ref(), opts).map_err(err)
}

/// A training run over one adapter. Drive it with `step()` or `train()`;
/// `pause()`, `resume()` and `cancel()` act between steps.
#[wasm_bindgen]
pub struct TrainRun {
    model: Rc<RefCell<ModelState>>,
    run: Rc<RefCell<Run>>,
    name: String,
    paused: Rc<Cell<bool>>,
    cancelled: Rc<Cell<bool>>,
    /// This run object's step times (for the ETA).
    seconds: Rc<Cell<StepClock>>,
}

/// `evaluate` (SFT's loss; `preference` false) and `evaluatePreference` on
/// held-out `data`.
async fn evaluate_held_out(
    state: Rc<RefCell<ModelState>>,
    data: JsValue,
    opts: JsValue,
    preference: bool,
) -> JsResult<JsValue> {
    let o: EvalOptions = options(&opts)?;
    let st = busy(state.try_borrow())?;
    let adapter = chosen_adapter(&st, &opts)?;
    let mut recipe = o.to_recipe().map_err(err)?;
    recipe.set_pad_id(st.tokenizer.as_ref());
    let loss = match (recipe.objective, preference) {
        (Objective::Preference(loss), true) => Some(loss),
        (Objective::Sft(_), false) => None,
        (Objective::Reward(r), true) => {
            let virtual_tokens = adapter.map_or(0, |a| a.virtual_tokens() + a.prefix_len());
            let dopts =
                recipe.eval_data_options(st.model.config.max_position_embeddings.saturating_sub(virtual_tokens));
            let ds = dataset(&st, "evaluation data", &data, &recipe, &dopts)?;
            let e = evaluate_reward(&st.gpu, &st.model, adapter, &ds.epoch(0), &r).await.map_err(err)?;
            let metrics: serde_json::Map<String, serde_json::Value> =
                e.stats.metrics().iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
            let batches = ds.batches_per_epoch();
            return to_js(&serde_json::json!({"loss": e.loss, "metrics": metrics, "batches": batches}));
        }
        (Objective::Classification(_), _) => {
            return Err(err("a classifier's loss and accuracy: evaluateClassifier"));
        }
        (Objective::Sft(_) | Objective::Grpo(_), true) => {
            return Err(err("evaluatePreference needs a preference objective: dpo, orpo, cpo, kto or reward"));
        }
        (objective, false) => {
            return Err(err(format!("evaluate measures SFT's loss: evaluatePreference measures {}", objective.name())));
        }
    };
    let virtual_tokens = adapter.map_or(0, |a| a.virtual_tokens() + a.prefix_len());
    let dopts = recipe.eval_data_options(st.model.config.max_position_embeddings.saturating_sub(virtual_tokens));
    let ds = dataset(&st, "evaluation data", &data, &recipe, &dopts)?;
    if let Some(loss) = loss {
        let e = evaluate_preference(&st.gpu, &st.model, adapter, &ds.epoch(0), loss, None).await.map_err(err)?;
        let metrics: serde_json::Map<String, serde_json::Value> =
            e.metrics.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
        return to_js(&serde_json::json!({"loss": e.loss, "metrics": metrics, "batches": e.batches}));
    }
    let e = evaluate(&st.gpu, &st.model, adapter, &ds.epoch(0), recipe.objective.sft_loss()).await.map_err(err)?;
    to_js(&serde_json::json!({"loss": e.loss, "perplexity": e.perplexity, "tokens": e.tokens, "entropy": e.entropy,
                              "meanTokenAccuracy": e.mean_token_accuracy}))
}

async fn one_step(
    model: &Rc<RefCell<ModelState>>,
    run: &Rc<RefCell<Run>>,
    seconds: &Rc<Cell<StepClock>>,
) -> JsResult<Option<StepEvent>> {
    let st = busy(model.try_borrow())?;
    let mut r = run.try_borrow_mut().map_err(|_| err("this run is already taking a step"))?;
    let start = now_seconds();
    let Some(s) = r.step(&st.gpu, &st.model).await.map_err(err)? else {
        return Ok(None);
    };
    let secs = (now_seconds() - start).max(1e-6);
    let mut clock = seconds.get();
    clock.record(secs);
    seconds.set(clock);
    let total = r.total_steps();
    Ok(Some(StepEvent {
        step: s.step,
        total_steps: total,
        loss: s.loss,
        lr: s.lr,
        grad_norm: s.grad_norm,
        tokens: s.tokens,
        tokens_per_second: s.tokens as f64 / secs,
        entropy: s.mean_token_accuracy.and(s.entropy),
        mean_token_accuracy: s.mean_token_accuracy,
        num_tokens: s.num_tokens,
        step_seconds: secs,
        eta_seconds: clock.eta(total.saturating_sub(s.step)),
        rewards: s.preference.map(|p| Rewards {
            chosen: p.rewards_chosen,
            rejected: p.rewards_rejected,
            accuracies: p.rewards_accuracies,
            margins: p.rewards_margins,
            logps_chosen: p.logps_chosen,
            logps_rejected: p.logps_rejected,
            logits_chosen: p.logits.map(|l| l[0]),
            logits_rejected: p.logits.map(|l| l[1]),
            nll_loss: p.orpo.map(|o| o[0]).or(p.nll_loss),
        }),
        kto: s.kto,
        reward: s.reward,
    }))
}

/// A run's `train()` loop: `step` until it reports nothing more ("done") or
/// `cancelled` is set ("cancelled"), waiting while `paused`, each event handed
/// to `on_step`.
pub(super) async fn drive<E: Serialize, F: std::future::Future<Output = JsResult<Option<E>>>>(
    (paused, cancelled): (&Cell<bool>, &Cell<bool>),
    on_step: Option<&Function>,
    mut step: impl FnMut() -> F,
) -> JsResult<&'static str> {
    loop {
        if cancelled.get() {
            return Ok("cancelled");
        }
        if paused.get() {
            sleep(50).await;
            continue;
        }
        match step().await? {
            Some(e) => {
                if let Some(f) = on_step {
                    f.call1(&JsValue::NULL, &to_js(&e)?)?;
                }
                // Let the event loop breathe (messages, pause and cancel calls).
                sleep(0).await;
            }
            None => return Ok("done"),
        }
    }
}

#[wasm_bindgen]
impl TrainRun {
    /// One optimizer step; resolves to its event, or undefined when the run is done.
    #[wasm_bindgen(unchecked_return_type = "Promise<StepEvent | undefined>")]
    pub fn step(&self) -> Promise {
        let (model, run, seconds) = (self.model.clone(), self.run.clone(), self.seconds.clone());
        future_to_promise(async move {
            match one_step(&model, &run, &seconds).await? {
                Some(e) => to_js(&e),
                None => Ok(JsValue::UNDEFINED),
            }
        })
    }

    /// Steps until done or cancelled, calling `onStep` after each; waits while paused.
    #[wasm_bindgen(unchecked_return_type = "Promise<TrainSummary>")]
    pub fn train(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(event: StepEvent) => void")] on_step: Option<Function>,
    ) -> Promise {
        let (model, run, seconds) = (self.model.clone(), self.run.clone(), self.seconds.clone());
        let (paused, cancelled) = (self.paused.clone(), self.cancelled.clone());
        future_to_promise(async move {
            let state = drive((&paused, &cancelled), on_step.as_ref(), || one_step(&model, &run, &seconds)).await?;
            let r = run.try_borrow().map_err(|_| err("this run is taking a step"))?;
            to_js(&TrainSummary { steps: r.trainer.step, total_steps: r.total_steps(), state })
        })
    }

    pub fn pause(&self) {
        self.paused.set(true);
    }

    pub fn resume(&self) {
        self.paused.set(false);
    }

    /// Stops `train()` after the step in flight; the adapter keeps what it learned.
    pub fn cancel(&self) {
        self.cancelled.set(true);
    }

    #[wasm_bindgen(js_name = isPaused)]
    pub fn is_paused(&self) -> bool {
        self.paused.get()
    }

    #[wasm_bindgen(js_name = currentStep)]
    pub fn current_step(&self) -> JsResult<f64> {
        Ok(self.run.try_borrow().map_err(|_| err("this run is taking a step"))?.trainer.step as f64)
    }

    #[wasm_bindgen(js_name = totalSteps)]
    pub fn total_steps(&self) -> JsResult<f64> {
        Ok(self.run.try_borrow().map_err(|_| err("this run is taking a step"))?.total_steps() as f64)
    }

    /// The adapter this run trains.
    #[wasm_bindgen(js_name = adapterName)]
    pub fn adapter_name(&self) -> String {
        self.name.clone()
    }

    /// The training checkpoint (adapter, AdamW moments, step, RNG, data position).
    #[wasm_bindgen(js_name = saveCheckpoint, unchecked_return_type = "Promise<Uint8Array>")]
    pub fn save_checkpoint(&self) -> Promise {
        let (model, run) = (self.model.clone(), self.run.clone());
        future_to_promise(async move {
            let st = busy(model.try_borrow())?;
            let r = run.try_borrow().map_err(|_| err("this run is taking a step"))?;
            let bytes = save_checkpoint(&st.gpu, &r.trainer, &st.model.config, &r.progress()).await.map_err(err)?;
            Ok(Uint8Array::from(bytes.as_slice()).into())
        })
    }
}
