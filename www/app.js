// The demo page's UI thread: forms, progress, the loss chart and the
// before/after generation; the preference mode's panel is preference.js, GRPO's grpo.js, classification's
// classifier.js, the chat panel chat.js.
// All library work happens in worker.js.
import { preferences, rewardTable, metricsKind } from "./preference.js";
import { grpoPanel, samplesGroups } from "./grpo.js";
import { classifierPanel, judges, labelNames, verdictText } from "./classifier.js";
import { cachePanel } from "./cached-models.js";
import { presetList, hubUrl, modelBaseUrl, mib } from "./presets.js";
import { stepClock } from "./eta.js";
import { chatPanel } from "./chat.js";
import { checkFeatures, showFeatures } from "./features.js";
import { lostNotice, recoveredNotice } from "./recovery.js";

const $ = (id) => document.getElementById(id);
const state = { losses: [], speeds: [], evals: [], evalAccuracies: [], rewards: [], trained: false, judge: null, loaded: false, resuming: false, phase: "starting", loadNotes: [] };

// One state decides which controls work (data-phase on <body> says which):
//   starting → loading → idle;  idle → loading | training | generating | exporting (the .gguf);
//   training ⇄ paused;  training, paused → idle when the run ends;  generating, exporting → idle;
//   a resumed run: loading → training once the checkpoint is back;  any error → idle.
function setPhase(phase) {
  state.phase = phase;
  document.body.dataset.phase = phase;
  const idle = phase === "idle";
  const running = phase === "training" || phase === "paused";
  $("load").disabled = !idle;
  $("train").disabled = !idle || !state.loaded;
  $("pause").disabled = !running;
  $("pause").textContent = phase === "paused" ? "Resume" : "Pause";
  $("cancel").disabled = !running;
  $("generate").disabled = !idle || !state.loaded;
  $("download").disabled = !idle || !state.trained;
  // llama.cpp applies plain LoRA only; other methods' adapters have no GGUF form, and neither has a classifier.
  const lora = state.trainedMethod === "lora" && !state.judge;
  $("download-gguf").disabled = !idle || !state.trained || !lora;
  $("gguf-kind").disabled = $("download-gguf").disabled;
  $("gguf-note").textContent = !state.trained || lora ? "" : state.judge ?
    `llama.cpp runs language models, not classifiers: this ${state.judge === "reward" ? "reward model" : "classifier"} downloads as PEFT's files (.zip) only.` :
    `llama.cpp takes plain LoRA adapters only: train with LoRA to download a .gguf (this one is ${state.trainedMethod}).`;
  $("judge").disabled = !idle || !state.trained || !state.judge;
  $("resume-run").disabled = running || phase === "generating" || phase === "exporting";
  pref.controls(idle, state.loaded);
  cache.controls(idle);
  chat.controls(phase);
}

// Errors show next to what caused them, in the words of the form; the
// library's own wording (file and function names) goes to the console.
const ERROR_BOX = { load: "model-error", plan: "model-error", train: "train-error", "resume-checkpoint": "train-error",
  autosave: "train-error", data: "train-error", pause: "train-error", resume: "train-error", cancel: "train-error",
  generate: "try-error", judge: "try-error", download: "try-error", "download-gguf": "try-error", pairs: "pref-error", cache: "model-error", chat: "chat-error" };
const FORM_NAMES = { r: "r", lora_alpha: "alpha", target_modules: "targets", lora_dropout: "dropout", seq_len: "seq len",
  batch_size: "batch", grad_accum: "gradient accumulation", reduction_factor: "reduction factor", steps: "steps", lr: "learning rate",
  beta: "beta", label_smoothing: "label smoothing", loss_type: "dpo loss", trainable_tokens: "tokens to train",
  token_indices: "tokens to train", modules_to_save: "train whole", num_generations: "completions a prompt",
  max_completion_length: "completion length", temperature: "temperature", num_labels: "labels" };
function inFormWords(message) {
  const formWords = (text) => text.replace(/\b(seq_len|batch_size|grad_accum)\b/g, (k) => FORM_NAMES[k]);
  const field = message.match(/^(?:adapter_config\.json: field|training option) `(\w+)`: (.*)$/s);
  if (field) return `${FORM_NAMES[field[1]] ?? field[1]}: ${formWords(field[2])}`;
  const internal = message.match(/^invalid argument to [\w:]+: (.*)$/s);
  return formWords(internal ? internal[1] : message);
}
function showError(context, message) {
  const words = inFormWords(message);
  if (words !== message) console.info(`webpeft (${context}): ${message}`);
  const box = $(ERROR_BOX[context] ?? "error");
  box.hidden = false;
  box.textContent = ERROR_BOX[context] ? words : `${context ? context + ": " : ""}${words}`;
  document.body.dataset.error = words;
  if (context === "load" || context === "plan") {
    state.loaded = false;
    $("load-status").textContent = "not loaded";
    $("load-progress").value = 0;
  }
  state.resuming = false;
  setPhase(state.phase === "starting" && context !== "load" ? "starting" : "idle");
}
function clearError() {
  for (const id of ["error", "model-error", "train-error", "try-error", "pref-error"]) { $(id).hidden = true; $(id).textContent = ""; }
}
const pref = preferences({ send: (msg) => worker.postMessage(msg), setPhase, showError });
const cache = cachePanel({ showError });
const chat = chatPanel({ send: (msg) => worker.postMessage(msg), setPhase, showError, save });
const grpo = grpoPanel();
const cls = classifierPanel();

// Autosave: the worker sends a training checkpoint every few steps; it is kept
// in IndexedDB (on this machine) with what is needed to go on after a reload.
const DB = { name: "webpeft-demo", store: "autosave", key: "run" };
function idb(mode, fn) {
  return new Promise((ok, fail) => {
    const open = indexedDB.open(DB.name, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(DB.store);
    open.onerror = () => fail(open.error);
    open.onsuccess = () => {
      const tx = open.result.transaction(DB.store, mode);
      const req = fn(tx.objectStore(DB.store));
      tx.oncomplete = () => { ok(req?.result); open.result.close(); };
      tx.onerror = () => fail(tx.error);
    };
  });
}
const saveAutosave = (v) => idb("readwrite", (s) => s.put(v, DB.key));
const readAutosave = () => idb("readonly", (s) => s.get(DB.key));
const clearAutosave = () => idb("readwrite", (s) => s.delete(DB.key));

// The worker is (re)started for each model source: its Content-Security-Policy
// (from the server) lets it reach the page's origin and that one source only.
let worker = null;
let workerOrigin = null;
let pendingLoad = null;
let pendingResume = null;
function startWorker(origin) {
  worker?.terminate();
  workerOrigin = origin;
  const url = new URL("worker.js", import.meta.url);
  if (origin) url.searchParams.set("connect", origin);
  try {
    worker = new Worker(url, { type: "module" });
  } catch (e) {
    showError("start", `this browser cannot run module workers: ${e.message}`);
    return;
  }
  worker.addEventListener("error", (e) => showError("worker", e.message || "the worker failed to start"));
  worker.addEventListener("message", onMessage);
  worker.postMessage({ type: "init" });
}

function onMessage(e) {
  const m = e.data;
  if (chat.message(m)) return;
  switch (m.type) {
    case "ready":
      $("gpu-info").textContent = `GPU: ${m.info.name || "WebGPU adapter"} (${m.info.backend}), ${mib(m.info.maxStorageBufferBindingSize)} per binding` +
        `${m.info.shaderF16 ? ", shader-f16" : ""}` +
        (m.info.deviceType === "Cpu" ? ". This is a software renderer (no GPU in use): expect training to be slow." : ".");
      if (!m.info.shaderF16) { $("compute").value = "f32"; $("compute").disabled = true; }
      document.body.dataset.gpu = "ready";
      presets.then((p) => p.plan());
      if (pendingResume) { pendingResume(); pendingResume = null; }
      else if (pendingLoad) { worker.postMessage(pendingLoad); pendingLoad = null; }
      else { state.phase = "idle"; load(); }
      break;
    case "plan": {
      const p = m.plan;
      $("plan").textContent = `Memory plan: weights ${mib(p.weightBytes)}, adapter + optimizer ${mib(p.adapterBytes + p.optimizerBytes)}, ` +
        `activations ${mib(p.activationBytes)}: ${mib(p.totalBytes)} in all; largest buffer ${mib(p.largestBufferBytes)} of ${mib(p.bindingLimitBytes)} allowed.`;
      break;
    }
    case "load-progress": {
      const p = m.progress;
      $("load-progress").max = p.totalBytes || 1;
      $("load-progress").value = p.loadedBytes;
      $("load-status").textContent = `${mib(p.loadedBytes)} / ${mib(p.totalBytes)} — ${p.tensor}`;
      if (p.note) state.loadNotes.push(`${p.tensor}: ${p.note}`);
      break;
    }
    case "cached": cache.cached(m.requests > 0); break;
    case "loaded":
      state.loaded = true;
      $("load-status").textContent = `loaded: ${m.info.modelType}, ${(m.info.parameters / 1e6).toFixed(2)}M parameters, ` +
        `${m.info.quant} base (${mib(m.info.weightBytes)}, ${m.info.computeDtype} compute) in ${m.seconds.toFixed(2)} s` +
        (state.loadNotes.length ? `; ${state.loadNotes.length} weights kept in another format (${state.loadNotes[0]})` : "") +
        (m.info.generation.unsupported.length ? `; its generation_config.json also sets ${m.info.generation.unsupported.join(", ")}, ` +
          "which generation here does not apply (transformers would)" : "");
      $("load-progress").value = $("load-progress").max;
      document.body.dataset.loadSeconds = m.seconds;
      document.body.dataset.model = "loaded";
      setPhase(state.resuming ? "loading" : "idle");
      break;
    case "step": {
      const ev = m.event;
      const eta = clock.step(ev);
      const kind = metricsKind(ev);
      const speed = ev.tokensPerSecond ?? ev.tokens / ev.stepSeconds; // a GRPO step's: its sampled tokens
      state.losses.push(ev.loss);
      state.speeds.push(speed);
      $("train-progress").max = ev.totalSteps;
      $("train-progress").value = ev.step;
      $("train-status").textContent = `step ${ev.step}/${ev.totalSteps} · loss ${ev.loss.toFixed(4)} · ` +
        (ev.rewards ? `margin ${ev.rewards.margins.toFixed(3)} · accuracy ${ev.rewards.accuracies.toFixed(2)} · ` : "") +
        (kind === "reward" ? `margin ${ev.reward.margin.toFixed(3)} · accuracy ${ev.reward.accuracy.toFixed(2)} · ` : "") +
        (ev.kto ? `kl ${ev.kto.kl.toFixed(3)} · ` : "") +
        (kind === "grpo" ? `reward ${ev.reward.toFixed(3)} · ` : "") +
        (ev.meanTokenAccuracy !== undefined ? `token accuracy ${(100 * ev.meanTokenAccuracy).toFixed(1)}% · ` : "") +
        `${speed.toFixed(0)} tokens/s · ETA ${eta.text}`;
      if (kind) {
        const grpoMetrics = kind === "grpo" ? { reward: ev.reward, rewardStd: ev.rewardStd, entropy: ev.entropy,
          meanLength: ev.meanLength, completionRewards: ev.completions.map((c) => c.reward) } : {};
        state.rewards.push({ step: ev.step, loss: ev.loss, ...(kind === "reward" ? ev.reward : ev.rewards ?? ev.kto ?? grpoMetrics) });
        rewardTable.add(ev);
      }
      if (kind === "grpo") grpo.step(ev);
      document.body.dataset.steps = ev.step;
      document.body.dataset.stepSeconds = ev.stepSeconds;
      drawChart();
      break;
    }
    case "eval":
      state.evals.push([m.step, m.loss]);
      document.body.dataset.evalLosses = JSON.stringify(state.evals);
      // A classifier's held-out accuracy (single-label), beside its loss.
      if (m.accuracy !== null) {
        state.evalAccuracies.push([m.step, m.accuracy]);
        document.body.dataset.evalAccuracies = JSON.stringify(state.evalAccuracies);
        $("train-status").textContent += ` · held-out accuracy ${(100 * m.accuracy).toFixed(0)}%`;
      }
      drawChart();
      break;
    case "checkpoint":
      if (state.current) {
        saveAutosave({ ...state.current, bytes: m.bytes, step: m.step, totalSteps: m.totalSteps, losses: state.losses })
          .then(() => { document.body.dataset.autosaved = m.step; })
          .catch((err) => showError("autosave", `could not keep a checkpoint in IndexedDB: ${err}`));
      }
      break;
    case "resumed-checkpoint":
      state.resuming = false;
      // Steps after the checkpoint (made before a reload or a lost GPU) are computed again.
      state.losses.length = Math.min(state.losses.length, m.step);
      state.speeds.length = Math.min(state.speeds.length, m.step);
      state.evals = state.evals.filter(([s]) => s <= m.step);
      state.rewards = state.rewards.filter((r) => r.step <= m.step);
      rewardTable.truncate(m.step);
      $("train-status").textContent = `resumed at step ${m.step}`;
      setPhase("training");
      break;
    case "trained":
      state.trained = true;
      // A classifier or a reward model: "Try it" asks it about a text instead of generating with it.
      state.judge = m.judge;
      showJudge();
      if (m.summary.state === "done") clearAutosave().catch(() => {});
      document.body.dataset.losses = JSON.stringify(state.losses);
      document.body.dataset.rewards = JSON.stringify(state.rewards);
      document.body.dataset.tokensPerSecond = JSON.stringify(state.speeds);
      document.body.dataset.trained = m.summary.state;
      $("train-status").textContent += ` — ${m.summary.state}`;
      setPhase("idle");
      break;
    case "reward-model": // a reward model trained here: GRPO may score with it
      state.rewardModel = m.files;
      grpo.rewardModel(true);
      break;
    case "planned": presets.then((p) => p.planned(m)); break;
    case "paused": setPhase("paused"); break;
    case "resumed": clock.skip(); setPhase("training"); break;
    case "token": $(m.which).textContent += m.text; break;
    case "generated":
      if (pref.generated(m)) break;
      document.body.dataset[m.which] = "done";
      if (m.which === "before" && state.trained && !state.judge) {
        worker.postMessage({ type: "generate", which: "after", prompt: $("prompt").value });
      } else setPhase("idle");
      break;
    case "judged":
      $("judge-result").textContent = m.kind === "reward"
        ? `score ${m.result.score.toFixed(4)} (the reward model's logit: the higher, the more preferred)`
        : verdictText(m.result, state.judgeLabels);
      document.body.dataset.judged = JSON.stringify(m.result);
      setPhase("idle");
      break;
    case "zip":
      save(new Blob([m.bytes], { type: "application/zip" }), "webpeft-adapter.zip");
      break;
    case "gguf":
      save(m.blob, m.kind === "lora" ? `webpeft-adapter-${m.ggufType}.gguf` : `webpeft-merged-${m.ggufType}.gguf`);
      setPhase("idle");
      break;
    case "gpu-lost": // not an error: the worker gets a new device, reloads the model and goes on (recovery.js)
      $("gpu-notice").hidden = false;
      $("gpu-notice").textContent = lostNotice(m);
      document.body.dataset.gpuLost = Number(document.body.dataset.gpuLost ?? 0) + 1;
      state.resuming = m.training;
      setPhase("loading");
      break;
    case "gpu-recovered":
      $("gpu-notice").textContent = recoveredNotice(m);
      document.body.dataset.gpuRecovered = Number(document.body.dataset.gpuRecovered ?? 0) + 1;
      document.body.dataset.recoverySeconds = m.sinceLoss;
      if (m.resumeAt === null) setPhase("idle");
      break;
    case "error":
      showError(m.context, m.message);
      break;
  }
}

/** Offers `blob` as a download named `name`. */
function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
}

function drawChart() {
  const c = $("loss-chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const l = state.losses;
  if (l.length === 0) return;
  const all = [...l, ...state.evals.map(([, v]) => v)];
  const lo = Math.min(...all), hi = Math.max(...all);
  const x = (i) => 30 + (i / Math.max(1, l.length - 1)) * (c.width - 40);
  const y = (v) => 10 + (hi === lo ? 0.5 : (hi - v) / (hi - lo)) * (c.height - 30);
  g.strokeStyle = "#999"; g.beginPath(); g.moveTo(30, 10); g.lineTo(30, c.height - 20); g.lineTo(c.width - 10, c.height - 20); g.stroke();
  g.fillStyle = "#333"; g.font = "11px sans-serif";
  g.fillText(hi.toFixed(2), 0, 14); g.fillText(lo.toFixed(2), 0, c.height - 22); g.fillText("loss", 34, 20);
  g.strokeStyle = "#2563eb"; g.lineWidth = 2; g.beginPath();
  l.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
  g.stroke();
  // The held-out loss after step s, at step s's place on the same axis.
  if (state.evals.length === 0) return;
  g.strokeStyle = g.fillStyle = "#ea580c"; g.beginPath();
  state.evals.forEach(([s, v], i) => (i ? g.lineTo(x(s - 1), y(v)) : g.moveTo(x(s - 1), y(v))));
  g.stroke();
  state.evals.forEach(([s, v]) => g.fillRect(x(s - 1) - 3, y(v) - 3, 6, 6));
  g.fillText("held-out", 70, 20);
}

function source() {
  const kind = document.querySelector("input[name=source]:checked").value;
  if (kind === "url") return { kind, url: modelBaseUrl($("model-url").value) };
  if (kind === "files") {
    const files = [...$("model-files").files].filter((f) => !f.webkitRelativePath.split("/").slice(1, -1).length);
    if (files.length === 0) throw new Error("choose a model folder (config.json, *.safetensors, tokenizer.json)");
    return { kind, files };
  }
  return { kind: "default" };
}

function config() {
  const f = new FormData($("config"));
  const n = (k) => Number(f.get(k));
  const targets = f.get("targets") === "all-linear" ? "all-linear" : f.get("targets").split(",");
  return { method: f.get("method"), r: n("r"), alpha: n("alpha"), targets, lr: n("lr"), steps: n("steps"),
    batchSize: n("batchSize"), seqLen: n("seqLen"), seed: n("seed"), evalSteps: n("evalSteps") || 4,
    objective: f.get("objective"), beta: n("beta"), lossType: f.get("lossType"),
    ...(samplesGroups(f.get("objective")) ? { grpo: grpo.settings() } : {}),
    ...(f.get("objective") === "classification" ? { cls: cls.settings() } : {}),
    tokens: String(f.get("tokens") ?? "").split(",").map((t) => t.trim()).filter(Boolean),
    modulesToSave: String(f.get("modulesToSave") ?? "").split(",").filter(Boolean) };
}

function load() {
  clearError();
  try {
    const c = config();
    const src = source();
    state.source = src; // what is loaded, whatever the form says later
    state.loaded = false;
    state.rewardModel = null; // a reward model trained on another base does not score for this one
    grpo.rewardModel(false);
    $("load-status").textContent = "loading…";
    $("plan").textContent = "";
    setPhase("loading");
    state.loadNotes = [];
    const msg = { type: "load", source: withToken(src), quant: $("quant").value, computeDtype: $("compute").value, method: c.method, r: c.r,
      batchSize: c.batchSize, seqLen: c.seqLen };
    const origin = src.kind === "url" ? new URL(src.url).origin : null;
    if (origin !== workerOrigin) {
      pendingLoad = msg; // a worker allowed to reach this source loads it once ready
      startWorker(origin);
    } else worker.postMessage(msg);
  } catch (e) { showError("load", e.message); }
}

/** A URL source with the access token, for the load message only: never in state.current (autosaved in IndexedDB). */
const withToken = (src) => (src.kind === "url" && $("hf-token").value ? { ...src, token: $("hf-token").value } : src);

$("load").onclick = load;
$("model-url").addEventListener("input", () => { document.querySelector("input[name=source][value=url]").checked = true; });
const clock = stepClock();
// The presets' verdicts follow the base format and the training settings.
const presets = presetList({
  root: $("presets"),
  settings: () => {
    const c = config();
    return { quant: $("quant").value, method: c.method, r: c.r, batchSize: c.batchSize, seqLen: c.seqLen, modulesToSave: c.modulesToSave };
  },
  send: (msg) => worker.postMessage(msg),
  choose: (p) => {
    document.querySelector("input[name=source][value=url]").checked = true;
    $("model-url").value = hubUrl(p.repo);
    load();
  },
});
presets.catch((e) => showError("presets", `could not read the model presets: ${e.message}`));
for (const el of [$("quant"), $("config")]) el.addEventListener("change", () => presets.then((p) => p.plan()));
$("train").onclick = () => {
  clearError();
  state.losses = [];
  state.speeds = [];
  state.evals = [];
  state.evalAccuracies = [];
  state.rewards = [];
  rewardTable.reset();
  drawChart();
  const objective = config().objective;
  let data = $("data").value;
  // Held-out data measures the SFT loss, or a classifier's loss and accuracy: a preference or GRPO run has none.
  let evalData = objective === "sft" ? $("eval-data").value.trim() || null : null;
  try {
    if (samplesGroups(objective)) data = grpo.data();
    else if (objective === "classification") {
      data = cls.data();
      evalData = cls.evalData();
      state.pendingLabels = labelNames(config().cls.labels);
    } else if (objective !== "sft") data = pref.data();
  } catch (e) { return showError("train", e.message); }
  if (!data.trim()) return showError("train", "the training data is empty: paste JSONL or choose a file");
  setPhase("training");
  clock.reset();
  $("train-status").textContent = "step 1 compiles the GPU programs training needs; the steps after it are faster…";
  const src = state.source;
  state.trainedMethod = config().method;
  // A GRPO run scoring with the page's reward model autosaves the reward model's files too.
  const rewardModel = samplesGroups(objective) && config().grpo.reward === "model" ? { rewardModel: state.rewardModel } : {};
  state.current = src.kind === "files" ? null :
    { config: config(), data, source: src, quant: $("quant").value, computeDtype: $("compute").value, ...rewardModel };
  worker.postMessage({ type: "train", config: config(), data, evalData });
};

// A run interrupted by a reload (or a crash) can go on from its last checkpoint.
readAutosave().then((saved) => {
  if (!saved) return;
  $("resume-banner").hidden = false;
  $("resume-text").textContent = `A training run was interrupted at step ${saved.step} of ${saved.totalSteps}.`;
  $("discard-run").onclick = () => { clearAutosave(); $("resume-banner").hidden = true; };
  $("resume-run").onclick = () => {
    $("resume-banner").hidden = true;
    clearError();
    const c = saved.config;
    for (const [k, v] of Object.entries(c)) {
      const el = document.querySelector(`#config [name=${k}]`);
      if (el) el.value = Array.isArray(v) ? v.join(",") : v;
    }
    if ((c.objective ?? "sft") === "sft") $("data").value = saved.data;
    else if (samplesGroups(c.objective)) grpo.restore(saved.data, c.grpo);
    else if (c.objective === "classification") cls.restore(saved.data, c.cls);
    else pref.restore(saved.data);
    showObjective();
    $("quant").value = saved.quant;
    $("compute").value = saved.computeDtype ?? "f32";
    state.losses = saved.losses ?? [];
    state.speeds = [];
    drawChart();
    state.source = saved.source;
    state.current = { config: c, data: saved.data, source: saved.source, quant: saved.quant, computeDtype: saved.computeDtype,
      ...(saved.rewardModel ? { rewardModel: saved.rewardModel } : {}) };
    state.trainedMethod = c.method;
    state.resuming = true;
    state.loaded = false;
    setPhase("loading");
    state.loadNotes = [];
    clock.reset();
    const load = { type: "load", source: withToken(saved.source), quant: saved.quant, computeDtype: saved.computeDtype, method: c.method, r: c.r, batchSize: c.batchSize, seqLen: c.seqLen };
    let evalData = (c.objective ?? "sft") === "sft" ? $("eval-data").value.trim() || null : null;
    if (c.objective === "classification") {
      try { evalData = cls.evalData(); } catch { evalData = null; } // a box the page no longer reads: no held-out loss
      state.pendingLabels = labelNames(c.cls.labels);
    }
    const resume = { type: "resume-checkpoint", bytes: saved.bytes, step: saved.step, config: c, data: saved.data, evalData,
      ...(saved.rewardModel ? { rewardModel: saved.rewardModel } : {}) };
    if (saved.rewardModel) { state.rewardModel = saved.rewardModel; grpo.rewardModel(true); }
    const origin = saved.source.kind === "url" ? new URL(saved.source.url).origin : null;
    const send = () => { worker.postMessage(load); worker.postMessage(resume); };
    if (origin !== workerOrigin || !document.body.dataset.gpu) {
      pendingResume = send;
      if (origin !== workerOrigin) startWorker(origin);
    } else send();
  };
  document.body.dataset.autosave = "offered";
}).catch(() => {});
$("pause").onclick = () => worker.postMessage({ type: state.phase === "paused" ? "resume" : "pause" });
$("cancel").onclick = () => worker.postMessage({ type: "cancel" });
$("generate").onclick = () => {
  clearError();
  $("before").textContent = $("after").textContent = "";
  delete document.body.dataset.before;
  delete document.body.dataset.after;
  setPhase("generating");
  worker.postMessage({ type: "generate", which: "before", prompt: $("prompt").value });
  if (!state.trained) $("after").textContent = "(train an adapter first)";
  else if (state.judge) $("after").textContent = JUDGE_WRITES_NOTHING;
};
$("judge").onclick = () => {
  clearError();
  const text = $("judge-text").value;
  if (!text.trim()) return showError("judge", "write a text to classify or score");
  $("judge-result").textContent = "";
  delete document.body.dataset.judged;
  setPhase("generating");
  worker.postMessage({ type: "judge", context: "judge", kind: state.judge, text });
};
const JUDGE_WRITES_NOTHING = "(the adapter labels or scores texts, it does not write them: try it below)";
/** "Try it" for a classifier or a reward model: its verdict on a text; the generation's "after" column says why it is empty. */
function showJudge() {
  if (state.judge) state.judgeLabels = state.judge === "classification" ? state.pendingLabels : [];
  $("judge-row").hidden = !state.judge;
  $("judge").textContent = state.judge === "reward" ? "Score" : "Classify";
  $("judge-note").textContent = state.judge === "reward"
    ? "The adapter is a reward model: it writes no text, it scores one (its one logit). Score a text with it:"
    : "The adapter is a classifier: it writes no text, it labels one. Classify a text with it (each label's probability):";
  $("judge-result").textContent = "";
  if (state.judge) $("after").textContent = JUDGE_WRITES_NOTHING;
}
$("download").onclick = () => worker.postMessage({ type: "download" });
$("download-gguf").onclick = () => {
  clearError();
  const [kind, ggufType] = $("gguf-kind").value.split(":");
  // The toy default model's tokenizer is byte-level BPE with GPT-2's split regex: llama.cpp's "gpt-2"
  // pre-tokenizer (its hash is not in llama.cpp's table, so it is named).
  const tokenizerPre = state.source.kind === "default" ? "gpt-2" : undefined;
  setPhase("exporting");
  worker.postMessage({ type: "download-gguf", kind, ggufType, tokenizerPre });
};
// What each method trains, in one line, where it is picked.
const METHOD_NOTES = {
  lora: "LoRA: a low-rank update B·A beside each targeted weight (r, alpha, targets); PEFT's files.",
  dora: "DoRA: LoRA's update with a learned magnitude per output row, the direction normalised (use_dora); PEFT's files.",
  adalora: "AdaLoRA: LoRA in SVD form (B·diag(E)·A) starting at rank r; during the run it prunes the least important singular values down to 2/3 of r; PEFT's files.",
  ia3: "(IA)³: one learned vector per layer scaling the keys, values and feed-forward input (PEFT's defaults); the fewest parameters; PEFT's files.",
  prompt_tuning: "Prompt tuning: 20 learned virtual-token embeddings put before every input; the model itself is untouched; PEFT's files.",
  prefix_tuning: "Prefix tuning: 20 learned keys and values that every layer's attention sees before the input's; PEFT's files.",
  prefix_projection: "Prefix tuning through PEFT's MLP (prefix_projection): the keys and values are an MLP's output over 20 learned embeddings; PEFT saves the prefix it makes.",
  p_tuning: "P-tuning: 20 virtual-token embeddings made by PEFT's MLP prompt encoder, put before every input; PEFT saves the embeddings it makes.",
  trainable_tokens: "Trainable tokens: only the embedding rows of the tokens named below (a tied head's with them), e.g. a chat template's special tokens; PEFT's files.",
  seq_bn: "Bottleneck adapter after each MLP (AdapterHub's seq_bn, width hidden/16); AdapterHub's files.",
  double_seq_bn: "Bottleneck adapters after attention and after each MLP (AdapterHub's double_seq_bn); AdapterHub's files.",
  par_bn: "Bottleneck adapter beside each MLP, fed the residual stream (AdapterHub's par_bn, scaled by 4); AdapterHub's files.",
};
const objectivePicker = $("config").elements.objective;
const showObjective = () => {
  pref.showObjective(objectivePicker.value);
  grpo.show(objectivePicker.value);
  cls.show(objectivePicker.value);
};
objectivePicker.addEventListener("change", showObjective);
showObjective();
const methodPicker = $("config").elements.method;
const showMethodNote = () => { $("method-note").textContent = METHOD_NOTES[methodPicker.value] ?? ""; };
methodPicker.addEventListener("change", showMethodNote);
showMethodNote();

$("data-file").onchange = async (e) => { const f = e.target.files[0]; if (f) $("data").value = await f.text(); };

fetch("default-data.jsonl").then((r) => r.text()).then((t) => { if (!$("data").value) $("data").value = t; })
  .catch((e) => showError("data", `could not read the default dataset: ${e.message}`));
fetch("default-labels.jsonl").then((r) => r.text()).then((t) => cls.fill(t))
  .catch((e) => showError("data", `could not read the default labelled texts: ${e.message}`));
setPhase("starting");
// What WebGPU offers is checked first: a missing piece is named before anything loads.
checkFeatures().then((f) => {
  if (f.error) return showError("start", f.error);
  showFeatures(f, $("features"), $("compute"));
  cache.refresh();
  startWorker(null);
}).catch((e) => showError("start", `could not check this browser's WebGPU: ${e.message}`));
