// What this browser's WebGPU offers, checked on the page before the worker
// starts, so a missing piece is named in plain words instead of failing later:
// WebGPU itself (navigator.gpu), an adapter (requestAdapter() may give null),
// shader-f16 (the f16 compute option needs it), the buffer limits (what one
// training step may hold), and subgroups (webpeft does not need them). Nothing
// here assumes Chromium: every feature and limit is read from the adapter.

const MIB = 2 ** 20;

// What turns WebGPU on, by browser (versions where it shipped on by default).
const ENABLE_WEBGPU = "WebGPU is on by default in Chrome and Edge 113 or later (Windows, macOS, ChromeOS), Chrome 121 or " +
  "later on Android 12+, Safari 26 (macOS, iOS, iPadOS) and Firefox 141 or later on Windows. Elsewhere turn it on: in " +
  "Chrome or Edge on Linux with chrome://flags/#enable-unsafe-webgpu (and #enable-vulkan), in Firefox with " +
  "dom.webgpu.enabled in about:config, in older Safari with Develop → Feature Flags → WebGPU.";

// Models whose one step must fit a binding: the MLP's (batch × seq len, intermediate) activation is the
// largest buffer that cannot be split (weights are split by rows; see src/train/plan.rs).
const MODELS = [["SmolLM2-135M", 1536], ["SmolLM2-360M", 2560], ["Qwen2.5-0.5B", 4864], ["Llama-3.2-1B and 3B", 8192],
  ["Llama-3.1-8B", 14336]];

/**
 * The browser's WebGPU as webpeft sees it: `error` (a sentence) when training cannot start at all; otherwise
 * `notes` (id → a sentence) on what is missing or small, and the adapter's figures.
 */
export async function checkFeatures(nav = globalThis.navigator) {
  if (!nav?.gpu) {
    const why = globalThis.isSecureContext === false ?
      "WebGPU works only on secure pages: open this page over https:// or from localhost." : ENABLE_WEBGPU;
    return { error: `This browser has no WebGPU (navigator.gpu is missing), which webpeft needs to train on your GPU. ${why}` };
  }
  let adapter;
  try {
    adapter = await nav.gpu.requestAdapter();
  } catch (e) {
    adapter = null;
    console.info(`webpeft: requestAdapter failed: ${e?.message ?? e}`);
  }
  if (!adapter) {
    return { error: "WebGPU is present, but the browser offered no GPU adapter: the GPU or its driver may be blocklisted, " +
      "hardware acceleration may be turned off, or the GPU is in use by a crashed process. Turn on hardware acceleration " +
      "in the browser's settings, update the graphics driver, check chrome://gpu (Chrome, Edge) or about:support " +
      "(Firefox), or try another browser. " + ENABLE_WEBGPU };
  }
  const f16 = adapter.features.has("shader-f16");
  const subgroups = adapter.features.has("subgroups");
  const binding = adapter.limits.maxStorageBufferBindingSize;
  const buffer = adapter.limits.maxBufferSize;
  const notes = {};
  if (!f16) {
    notes["shader-f16"] = "This GPU has no shader-f16 (half-precision arithmetic in shaders): the f16 compute option is off " +
      "and the frozen model computes in f32, with the same results. f16, q8 and nf4 bases still load (they are unpacked in f32).";
  }
  // One buffer can hold at most the smaller of the two limits.
  const largest = Math.min(binding, buffer);
  if (largest < 1024 * MIB) {
    const tokens = MODELS.map(([name, inter]) => `${name} ${Math.floor(largest / (4 * inter))}`).join(", ");
    notes.limits = `This GPU allows buffers of at most ${(largest / MIB).toFixed(0)} MiB (maxStorageBufferBindingSize ` +
      `${(binding / MIB).toFixed(0)} MiB, maxBufferSize ${(buffer / MIB).toFixed(0)} MiB; 1 GiB or more is common on desktops). ` +
      "Model weights are split to fit, but one training step's activations are not: batch × seq len can be at most " +
      `${tokens} tokens. The memory plan refuses a setup over the limit when the model loads; lower the batch size ` +
      "or the sequence length then.";
  }
  if (!subgroups) {
    notes.subgroups = "No subgroups on this GPU: nothing is lost, webpeft's kernels do not need them.";
  }
  const info = adapter.info ?? {};
  return { error: null, notes, shaderF16: f16, subgroups, maxStorageBufferBindingSize: binding, maxBufferSize: buffer,
    fallback: Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter) };
}

/** Shows `report`'s notes in `box` (one paragraph each, data-feature = its id) and disables what cannot work. */
export function showFeatures(report, box, compute) {
  box.replaceChildren(...Object.entries(report.notes ?? {}).map(([id, text]) => {
    const p = document.createElement("p");
    p.dataset.feature = id;
    p.textContent = text;
    return p;
  }));
  box.hidden = box.childElementCount === 0;
  if (report.error === null && !report.shaderF16) {
    compute.value = "f32";
    compute.disabled = true;
    compute.title = report.notes["shader-f16"];
  }
}
