//! Creating the device, once, from whatever adapter the platform offers.

use std::sync::{Arc, Mutex};

use super::memory::{MemoryStats, MemoryTracker};
use super::pipelines::PipelineCache;
use super::pool::Pool;
use super::profile::{KernelTime, Profiler};
use crate::error::{Error, Result};

/// How to create a [`Gpu`]. The defaults are right for real use; tests shrink
/// `max_binding_bytes` to exercise tensors split across bindings.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Pretend the device binds at most this many bytes per storage buffer
    /// (never more than the adapter allows).
    pub max_binding_bytes: Option<u64>,
    /// Prefer the high-performance adapter where there are several.
    pub high_performance: bool,
    /// Request SHADER_F16 when the adapter has it.
    pub allow_f16: bool,
    /// How long a native wait for the GPU may take before it is an error.
    pub timeout_seconds: u64,
    /// Compile shaders with naga's bounds clamps and loop counters (slower;
    /// for debugging kernels). Natively, `WEBPEFT_SHADER_CHECKS=1` in the
    /// environment turns it on too (`scripts/test.sh` runs the kernel tests
    /// so once). In the browser it changes nothing: WebGPU always checks.
    pub shader_checks: bool,
    /// Which matmul kernels to run: chosen by the adapter (the default), or
    /// one family forced (tests run the real-GPU kernels on lavapipe).
    pub kernels: KernelFamily,
    /// Time the blocked GEMM's candidate block shapes for each shape class a
    /// run meets, and keep the fastest (real-GPU kernels only; see
    /// `kernels::tune`). Off: the fallback table's blocks.
    pub autotune: bool,
    /// Natively, a JSON file that keeps the tuned choices across runs, keyed
    /// by adapter and driver (the CLI uses the user's cache folder). None:
    /// choices live as long as the device.
    pub tuning_cache: Option<std::path::PathBuf>,
    /// Natively, a folder where compiled pipelines are kept between runs
    /// (wgpu's pipeline cache, where the backend has one: Vulkan), so a
    /// second run's first step does not compile every GPU program again.
    pub pipeline_cache_dir: Option<std::path::PathBuf>,
}

/// The matmul kernels a device runs (see `kernels::blocked`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelFamily {
    /// By the adapter's device type: CPU rasterizers (lavapipe, SwiftShader)
    /// get [`KernelFamily::Cpu`], everything else [`KernelFamily::Gpu`].
    #[default]
    Auto,
    /// Big register tiles without workgroup memory, 8-lane subgroup kernels.
    Cpu,
    /// Workgroup-memory block tiles and the decoding GEMV.
    Gpu,
}

impl std::str::FromStr for KernelFamily {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(KernelFamily::Auto),
            "cpu" => Ok(KernelFamily::Cpu),
            "gpu" => Ok(KernelFamily::Gpu),
            _ => Err(format!("kernel family must be auto, cpu or gpu, got {s:?}")),
        }
    }
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            max_binding_bytes: None,
            high_performance: true,
            allow_f16: true,
            timeout_seconds: 600,
            shader_checks: false,
            kernels: KernelFamily::Auto,
            autotune: true,
            tuning_cache: None,
            pipeline_cache_dir: None,
        }
    }
}

/// `WEBPEFT_SHADER_CHECKS=1`: natively, compile shaders with naga's runtime
/// checks whatever the options say. Never read in the browser, which has no
/// environment and whose WebGPU checks every access anyway.
fn shader_checks_from_env() -> bool {
    !cfg!(target_arch = "wasm32") && std::env::var("WEBPEFT_SHADER_CHECKS").is_ok_and(|v| v == "1")
}

/// What the adapter is, in a form that serialises for the JS API and the bench.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuInfo {
    pub name: String,
    pub vendor: u32,
    pub device: u32,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub backend: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamp_query: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

/// Whether the device was lost, and who waits to hear it: wgpu's
/// device-lost callback, [`Gpu::destroy`] and the test hook mark it; the first
/// reason is kept.
#[derive(Default)]
struct Lost {
    reason: Mutex<Option<String>>,
    waiters: Mutex<Vec<futures_channel::oneshot::Sender<String>>>,
}

impl Lost {
    fn mark(&self, reason: String) {
        let reason = {
            let mut l = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            l.get_or_insert(reason).clone()
        };
        for w in self.waiters.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = w.send(reason.clone());
        }
    }
}

/// A device and queue with webpeft's shared state: the pipeline cache, the
/// memory accounting and the errors the device reported.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) pipelines: PipelineCache,
    pub(crate) memory: Arc<MemoryTracker>,
    pub(crate) pool: Arc<Pool>,
    /// Bind groups kept between submissions, and the uniform buffer they bind.
    pub(crate) bind_groups: super::bind_groups::BindGroups,
    pub(crate) profiler: Profiler,
    /// Vectors of ones by length (sums over rows are k = 1 or n = 1 matmuls).
    ones: Mutex<std::collections::HashMap<usize, super::Tensor>>,
    info: GpuInfo,
    limits: wgpu::Limits,
    features: wgpu::Features,
    max_binding: u64,
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) timeout_seconds: u64,
    pub(crate) shader_checks: bool,
    kernels: KernelFamily,
    /// What kernel families keep per device, one value per type (the
    /// autotuner's choices: `kernels::tune`), so the device need not know them.
    state: Mutex<std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any + Send>>>,
    pub(crate) autotune: bool,
    /// Where the autotuner keeps its choices between runs (natively).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) tuning_cache: Option<std::path::PathBuf>,
    /// wgpu's pipeline cache and the file it is kept in (natively, where the
    /// backend has one).
    pub(crate) pipeline_cache: Option<(wgpu::PipelineCache, std::path::PathBuf)>,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Lost>,
    /// Test hook: allocations left before one fails (`u64::MAX`: never).
    allocations_left: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Gpu {
    /// Create a device on the best adapter, with its own limits and the optional
    /// features webpeft can use.
    pub async fn new() -> Result<Gpu> {
        Self::with_options(GpuOptions::default()).await
    }

    pub async fn with_options(options: GpuOptions) -> Result<Gpu> {
        #[cfg(not(target_arch = "wasm32"))]
        let descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        #[cfg(target_arch = "wasm32")]
        let descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        let instance = wgpu::Instance::new(descriptor);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: if options.high_performance {
                    wgpu::PowerPreference::HighPerformance
                } else {
                    wgpu::PowerPreference::LowPower
                },
                ..Default::default()
            })
            .await
            .map_err(|e| {
                let why = if cfg!(target_arch = "wasm32") {
                    format!(" (this browser has no WebGPU, or it is turned off: {e})")
                } else {
                    format!(" ({e}); on Linux install Mesa's Vulkan drivers (mesa-vulkan-drivers)")
                };
                Error::NoAdapter(why)
            })?;
        Self::from_adapter(adapter, options).await
    }

    /// Create the device on a chosen adapter.
    pub async fn from_adapter(adapter: wgpu::Adapter, options: GpuOptions) -> Result<Gpu> {
        let adapter_info = adapter.get_info();
        let limits = adapter.limits();
        let mut wanted = wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        if options.allow_f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        if options.pipeline_cache_dir.is_some() && !cfg!(target_arch = "wasm32") {
            wanted |= wgpu::Features::PIPELINE_CACHE;
        }
        let features = adapter.features() & wanted;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webpeft"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::DeviceRequest { adapter: adapter_info.name.clone(), message: e.to_string() })?;

        // The default handler panics; a user's bad input must never panic, so the
        // device's complaints are kept and returned as errors by the next check.
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let lost = Arc::new(Lost::default());
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| lost_sink.mark(format!("{reason:?}: {message}")));

        let max_binding = options
            .max_binding_bytes
            .map_or(limits.max_storage_buffer_binding_size, |m| m.min(limits.max_storage_buffer_binding_size));
        let info = GpuInfo {
            name: adapter_info.name.clone(),
            vendor: adapter_info.vendor,
            device: adapter_info.device,
            device_type: format!("{:?}", adapter_info.device_type),
            driver: adapter_info.driver.clone(),
            driver_info: adapter_info.driver_info.clone(),
            backend: adapter_info.backend.to_string(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroup_min_size: adapter_info.subgroup_min_size,
            subgroup_max_size: adapter_info.subgroup_max_size,
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: max_binding,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        };
        let kernels = match options.kernels {
            KernelFamily::Auto if adapter_info.device_type == wgpu::DeviceType::Cpu => KernelFamily::Cpu,
            KernelFamily::Auto => KernelFamily::Gpu,
            forced => forced,
        };
        let pipeline_cache = match (&options.pipeline_cache_dir, wgpu::util::pipeline_cache_key(&adapter_info)) {
            (Some(dir), Some(key)) if features.contains(wgpu::Features::PIPELINE_CACHE) => {
                let file = dir.join(key);
                let data = std::fs::read(&file).ok();
                // SAFETY: the data is what `save_pipeline_cache` wrote from this
                // adapter's own cache (wgpu and the driver check its header and
                // ignore data from another version, adapter or driver:
                // `fallback` starts an empty cache then). A file someone else
                // wrote there is the one risk, as with any driver cache file.
                let cache = unsafe {
                    device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                        label: Some("webpeft"),
                        data: data.as_deref(),
                        fallback: true,
                    })
                };
                Some((cache, file))
            }
            _ => None,
        };
        let gpu = Gpu {
            pipelines: PipelineCache::default(),
            memory: Arc::new(MemoryTracker::default()),
            pool: Arc::new(Pool::default()),
            bind_groups: Default::default(),
            profiler: Profiler::default(),
            ones: Mutex::default(),
            device,
            queue,
            info,
            limits,
            features,
            max_binding,
            timeout_seconds: options.timeout_seconds,
            shader_checks: options.shader_checks || shader_checks_from_env(),
            kernels,
            state: Mutex::default(),
            autotune: options.autotune && kernels == KernelFamily::Gpu,
            pipeline_cache,
            tuning_cache: options.tuning_cache,
            errors,
            lost,
            allocations_left: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        Ok(gpu)
    }

    /// The per-device value of type `T` (made with `T::default()` the first
    /// time), borrowed for `f`.
    pub(crate) fn with_state<T: Default + Send + 'static, R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut all = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let slot = all.entry(std::any::TypeId::of::<T>()).or_insert_with(|| Box::new(T::default()));
        f(slot.downcast_mut::<T>().expect("the slot of a type holds that type"))
    }

    /// What the tuning cache keys this device's choices by: the adapter, its
    /// driver and webpeft's version (a new driver or kernel retunes).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn tuning_key(&self) -> String {
        let i = &self.info;
        format!("{} / {} / {} {} / webpeft {}", i.name, i.backend, i.driver, i.driver_info, env!("CARGO_PKG_VERSION"))
    }

    /// Natively, write the compiled pipelines to the pipeline cache file (a
    /// temporary file of this process's renamed over it, so processes saving
    /// at once never mix their bytes). Best effort, as the tuning cache.
    pub fn save_pipeline_cache(&self) {
        if let Some((cache, file)) = &self.pipeline_cache {
            if let Some(data) = cache.get_data() {
                let temp = file.with_extension(format!("{}.tmp", std::process::id()));
                if let Some(dir) = file.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                if std::fs::write(&temp, &data).is_ok() {
                    let _ = std::fs::rename(&temp, file);
                }
            }
        }
    }

    /// The matmul kernel family this device runs (never `Auto`).
    pub fn kernel_family(&self) -> KernelFamily {
        self.kernels
    }

    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// "llvmpipe (LLVM 15.0.6, 256 bits) on vulkan (Cpu), subgroups of 8": what tests print.
    pub fn describe(&self) -> String {
        let i = &self.info;
        let subgroups = match (i.subgroups, i.subgroup_min_size, i.subgroup_max_size) {
            (false, ..) => String::new(),
            (true, lo, hi) if lo == hi => format!(", subgroups of {lo}"),
            (true, lo, hi) => format!(", subgroups of {lo}–{hi}"),
        };
        format!("{} on {} ({}){subgroups}", i.name, i.backend, i.device_type)
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    pub fn features(&self) -> wgpu::Features {
        self.features
    }

    /// The largest storage binding, in bytes, the kernels may use (the adapter's,
    /// or less when the options lowered it).
    pub fn max_binding_bytes(&self) -> u64 {
        self.max_binding
    }

    pub fn memory(&self) -> MemoryStats {
        MemoryStats { pooled_bytes: self.pool.idle_bytes(), ..self.memory.stats() }
    }

    /// Time every dispatch of later submissions with timestamp queries (see
    /// [`Gpu::take_profile`]); an error where the device has no timestamps.
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        if on && !self.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::invalid("Gpu::set_profiling", format!("{} has no timestamp queries", self.info.name)));
        }
        self.profiler.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// GPU time per kernel entry point over the submissions since the last
    /// call (while profiling was on), slowest first.
    pub async fn take_profile(&self) -> Result<Vec<KernelTime>> {
        let period = self.queue.get_timestamp_period() as f64;
        let mut runs = Vec::new();
        for p in self.profiler.take() {
            let bytes = super::readback::read_buffer(self, &p.buffer, p.labels.len() as u64 * 16).await?;
            runs.push((bytemuck::pod_collect_to_vec::<u8, u64>(&bytes), p.labels));
        }
        Ok(super::profile::summarise(&runs, period))
    }

    /// Bind groups kept for later submissions (`bind_groups.rs`): a
    /// diagnostic, and what the tests of that cache count.
    pub fn kept_bind_groups(&self) -> usize {
        self.bind_groups.lock().len()
    }

    /// Release the freed op outputs the pool keeps for reuse, the cached
    /// vectors of ones and the kept bind groups (which hold their buffers).
    pub fn trim_memory(&self) {
        self.pool.trim();
        self.bind_groups.clear();
        self.ones.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// A (len) f32 tensor of ones, uploaded once per length and shared.
    pub fn ones(&self, len: usize) -> Result<super::Tensor> {
        let mut cache = self.ones.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.get(&len) {
            return Ok(t.clone());
        }
        let t = super::Tensor::from_slice(self, &[len], &vec![1.0f32; len])?;
        cache.insert(len, t.clone());
        Ok(t)
    }

    /// Start measuring a new peak from the bytes live now.
    pub fn reset_peak_memory(&self) {
        self.memory.reset_peak()
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Return the first error the device reported since the last check, if any.
    pub fn check(&self, context: &str) -> Result<()> {
        if let Some(reason) = self.lost_reason() {
            return Err(Error::DeviceLost(reason));
        }
        let mut errors = self
            .errors
            .lock()
            .map_err(|_| Error::Gpu { context: context.into(), message: "error log poisoned".into() })?;
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.join("; ");
        errors.clear();
        Err(Error::Gpu { context: context.into(), message })
    }

    /// Test hook, the runtime's fault injection: after `after` more
    /// successful allocations, the next one fails as an out-of-memory device
    /// would (`Error::Gpu`), and so does every one after it until
    /// [`clear_faults`](Self::clear_faults).
    #[doc(hidden)]
    pub fn inject_allocation_failure(&self, after: u64) {
        self.allocations_left.store(after, std::sync::atomic::Ordering::Relaxed);
    }

    /// Why the device was lost (the driver's words, or "Destroyed: …"), or
    /// None while it works.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.reason.lock().ok().and_then(|l| l.clone())
    }

    /// Resolves with the reason once the device is lost (at once if it is
    /// already), or None when the device is dropped first. The future holds
    /// no reference to the device.
    pub fn lost(&self) -> impl std::future::Future<Output = Option<String>> + 'static {
        let (sender, receiver) = futures_channel::oneshot::channel();
        match self.lost_reason() {
            Some(reason) => {
                let _ = sender.send(reason);
            }
            None => self.lost.waiters.lock().unwrap_or_else(|p| p.into_inner()).push(sender),
        }
        // The callback may have run between the two locks: wake ourselves.
        if let Some(reason) = self.lost_reason() {
            self.lost.mark(reason);
        }
        async move { receiver.await.ok() }
    }

    /// Destroys the device (on the web, `GPUDevice.destroy()`): it is lost
    /// from now on, and every later operation fails with
    /// [`Error::DeviceLost`]. What a driver reset does, on purpose.
    pub fn destroy(&self) {
        self.lost.mark("Destroyed: Gpu::destroy was called".into());
        self.device.destroy();
    }

    /// Test hook: the device is reported lost from now on (as wgpu's
    /// device-lost callback would).
    #[doc(hidden)]
    pub fn inject_device_loss(&self, reason: &str) {
        self.lost.mark(format!("{reason} (injected)"));
    }

    /// Test hook: undoes the injected faults.
    #[doc(hidden)]
    pub fn clear_faults(&self) {
        self.allocations_left.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut l) = self.lost.reason.lock() {
            *l = None;
        }
    }

    /// Counts an allocation against the injected failure, if any.
    pub(crate) fn take_allocation(&self, what: &str) -> Result<()> {
        use std::sync::atomic::Ordering;
        let left = self.allocations_left.load(Ordering::Relaxed);
        if left == u64::MAX {
            return Ok(());
        }
        if left == 0 {
            return Err(Error::Gpu {
                context: format!("allocating {what}"),
                message: "out of memory (injected by a test hook)".into(),
            });
        }
        self.allocations_left.store(left - 1, Ordering::Relaxed);
        Ok(())
    }

    /// Check a buffer size against the device's limits before asking for it.
    pub(crate) fn check_buffer_size(&self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            return Err(Error::OverLimit {
                what: what.into(),
                bytes,
                limit: self.limits.max_buffer_size,
                limit_name: "max_buffer_size",
            });
        }
        Ok(())
    }
}
