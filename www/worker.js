// The library runs here, in a module Web Worker, so the page stays responsive
// while the GPU trains. Messages in: init, load, train (SFT, preference or GRPO), pause, resume, cancel,
// generate (which: before, after, or the preference mode's answer-a and answer-b), judge (a trained classifier's or
// reward model's verdict on a text), download, download-gguf, plan-configs, and destroy-gpu (a test hook: loses the
// device). Messages out: ready, load-progress, cached, loaded, step, eval, trained, reward-model (a reward model's files,
// which GRPO may then score with), token, generated, judged, zip, gguf, planned, gpu-lost, gpu-recovered, error. Every failure becomes an
// `error` message with readable text, except those of a lost GPU, which recovery.js handles; nothing is sent
// anywhere but the page. A URL model is downloaded once into the browser's storage (model-cache.js) and loaded
// from there. The chat panel's messages are chat-worker.js's.
import init, { Gpu, Model } from "./pkg/webpeft.js";
import { CachedModel } from "./model-cache.js";
import { chatWorker } from "./chat-worker.js";
import { recovery } from "./recovery.js";
import { rewardFunction, REWARD_MODEL } from "./rewards.js";
import { samplesGroups } from "./grpo.js";
import { judges, labelNames } from "./classifier.js";

let gpu = null;
let model = null;
let run = null;
let rewardModel = null; // the files of the last reward model trained on this base, kept as REWARD_MODEL for GRPO
const ADAPTER = "adapter";
const DEFAULT_MODEL = new URL("default-model/", self.location.href).href; // ships with the page: read in place, not cached
const AUTOSAVE_EVERY = 4; // steps between checkpoints sent to the page (it keeps them in IndexedDB)
const control = { paused: false, cancelled: false };

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** The autotuner's block choices for this adapter, kept in IndexedDB so a later visit need not time them again. */
const tuning = {
  db: () => new Promise((ok, ko) => {
    const open = indexedDB.open("webpeft-tuning", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("choices");
    open.onsuccess = () => ok(open.result);
    open.onerror = () => ko(open.error);
  }),
  key: () => `${gpu.info().name} ${gpu.info().backend}`,
  async load() {
    const db = await tuning.db();
    const json = await new Promise((ok, ko) => {
      const get = db.transaction("choices").objectStore("choices").get(tuning.key());
      get.onsuccess = () => ok(get.result);
      get.onerror = () => ko(get.error);
    });
    if (typeof json === "string") gpu.importTuning(json);
  },
  async save() {
    const db = await tuning.db();
    db.transaction("choices", "readwrite").objectStore("choices").put(gpu.exportTuning(), tuning.key());
  },
};

/** Steps `run` to the end (or a cancel), posting each step and a checkpoint every few steps. */
// Trains `run` to its end (or a cancel), measuring `evalData` (JSONL, or null) every
// `c.evalSteps` steps with the adapter as it then is.
// A run replayed after a lost GPU (`replayed`) stays paused if it was.
async function drive(run, c, evalData, replayed = false) {
  if (!replayed) control.paused = false;
  else if (control.paused) post({ type: "paused" });
  control.cancelled = false;
  for (;;) {
    if (control.cancelled) return { steps: run.currentStep(), totalSteps: run.totalSteps(), state: "cancelled" };
    rec.check();
    if (control.paused) { await sleep(50); continue; }
    const event = await run.step();
    if (!event) return { steps: run.currentStep(), totalSteps: run.totalSteps(), state: "done" };
    post({ type: "step", event });
    if (evalData && event.step % (c.evalSteps || 4) === 0) {
      const opts = { adapter: ADAPTER, batchSize: c.batchSize, seqLen: c.seqLen };
      const e = c.objective === "classification" ? await model.evaluateClassifier(evalData, opts) : await model.evaluate(evalData, opts);
      post({ type: "eval", step: event.step, loss: e.loss, accuracy: e.accuracy ?? null });
    }
    if (event.step === 1) tuning.save().catch(() => {}); // best effort: without it the next visit tunes again
    if (event.step % AUTOSAVE_EVERY === 0 && event.step < event.totalSteps) {
      const bytes = await run.saveCheckpoint();
      rec.saved(event.step, bytes);
      post({ type: "checkpoint", step: event.step, totalSteps: event.totalSteps, bytes }, [bytes.buffer]);
    }
  }
}

function trainOptions(c) {
  // beta belongs to the preference objectives, the loss type to dpo; the library refuses them elsewhere.
  const objective = c.objective ?? "sft";
  return { lr: c.lr, steps: c.steps, batchSize: c.batchSize, seqLen: c.seqLen, seed: c.seed,
    schedule: c.schedule ?? "constant", maxGradNorm: c.maxGradNorm ?? 1.0, objective,
    ...(["dpo", "orpo", "cpo", "kto"].includes(objective) ? { beta: c.beta } : {}),
    ...(objective === "dpo" && c.lossType ? { lossType: c.lossType } : {}) };
}

/** startGrpo's options from the page's: the training form's optimizer settings and the GRPO panel's (GRPO's or RLOO's
 * run, each with TRL's beta). */
function grpoOptions(c) {
  const g = c.grpo;
  return { objective: c.objective, lr: c.lr, steps: c.steps, batchSize: c.batchSize, seed: c.seed, schedule: c.schedule ?? "constant",
    maxGradNorm: c.maxGradNorm ?? 1.0, numGenerations: g.numGenerations, maxCompletionLength: g.maxCompletionLength,
    temperature: g.temperature };
}

/** planMemory's options for a load message's (or the presets' settings') quant, method, r, batch, seq len and
 * modules trained whole.
 * The page's method names a few variants: prefix tuning through its MLP, LoRA with DoRA. */
function planOptions(msg) {
  const projection = msg.method === "prefix_projection";
  const dora = msg.method === "dora";
  const method = projection ? "prefix_tuning" : dora ? "lora" : msg.method ?? "lora";
  const save = method === "lora" && msg.modulesToSave?.length ? { modulesToSave: msg.modulesToSave } : {};
  return { quant: msg.quant ?? "f32", method, prefixProjection: projection, useDora: dora, r: msg.r ?? 8,
    batchSize: msg.batchSize ?? 4, seqLen: msg.seqLen ?? 64, ...save };
}

const post = (msg, transfer) => self.postMessage(msg, transfer ?? []);

/** A new device, watched for its loss, with the autotuner's saved choices. */
async function newGpu() {
  gpu = await Gpu.create();
  rec.watch(gpu);
  await tuning.load().catch(() => {}); // best effort, as tuning.save
}

/** A run that ended leaves its adapter's files with the recovery, so a later loss does not take the adapter; a reward
 * model's are kept as REWARD_MODEL too, for GRPO to score with, and sent to the page (a run that uses it autosaves them). */
async function finish(summary, c) {
  const files = await model.exportAdapter(ADAPTER);
  rec.finished(files);
  if (c.objective === "reward") {
    await keepRewardModel(files);
    post({ type: "reward-model", files });
  }
  return summary;
}

/** Puts `files` (a reward model's) on the model as REWARD_MODEL, in place of an earlier one. */
async function keepRewardModel(files) {
  if (model.adapterNames().includes(REWARD_MODEL)) model.removeAdapter(REWARD_MODEL);
  await model.importAdapter(REWARD_MODEL, files);
  if (model.adapterNames().includes(ADAPTER)) model.setActiveAdapter(ADAPTER); // generation's default stays the trained one
  rewardModel = files;
}

/** A GRPO run's rewards: the page's function, or the reward model kept on this page (from the autosave after a reload). */
async function grpoRewards(c, saved) {
  const reward = rewardFunction(c.grpo.reward, c.grpo.rewardArg);
  if (reward === REWARD_MODEL && !model.adapterNames().includes(REWARD_MODEL)) {
    if (!saved) throw new Error("reward: train a reward model first (objective reward, on 👍/👎 pairs), then GRPO scores with it");
    await keepRewardModel(saved);
  }
  return [reward];
}

/**
 * The base model as the chat's saved kept adapters name it (kept-store.js): the built-in model, a URL's model by its
 * base URL (as model-cache.js keeps it), a picked folder by its name and its weights' size.
 */
function baseKey(source) {
  if (source.kind === "url") return `url:${source.url}`;
  if (source.kind === "files") {
    const folder = source.files[0]?.webkitRelativePath?.split("/")[0] ?? "";
    const weights = source.files.filter((f) => f.name.endsWith(".safetensors")).reduce((n, f) => n + f.size, 0);
    return `files:${folder}/${weights}`;
  }
  return "default";
}

const rec = recovery({
  post, createGpu: newGpu, replay: handle, enqueue: (fn) => enqueue("gpu", fn),
  importAdapter: async (files) => { await model.importAdapter(ADAPTER, files); model.setActiveAdapter(ADAPTER); },
  // The chat's kept adapters and the reward model go back on the reloaded model.
  reloaded: async () => { await chat.loaded(); if (rewardModel) await keepRewardModel(rewardModel); },
});
const fail = (context, e) => post({ type: "error", context, message: String(e?.message ?? e) });
const chat = chatWorker({ model: () => model, trained: ADAPTER, post, isLoss: (e) => rec.isLoss(e),
  generated: () => tuning.save().catch(() => {}) });

async function handle(msg) {
  switch (msg.type) {
    case "init": {
      await init();
      await newGpu();
      post({ type: "ready", info: gpu.info() });
      break;
    }
    case "load": {
      if (!gpu) throw new Error("the GPU is not ready");
      rec.loading(msg);
      if (!msg.replayed) chat.loading(baseKey(msg.source)); // a new base: the kept adapters were the old one's
      const quant = msg.quant ?? "f32";
      const computeDtype = msg.computeDtype ?? "f32";
      const onProgress = (p) => post({ type: "load-progress", progress: p });
      const start = performance.now();
      let configText;
      let cached = null;
      if (msg.source.kind === "url") {
        cached = await CachedModel.open(msg.source, onProgress);
        configText = await cached.config();
      } else if (msg.source.kind === "files") {
        const config = msg.source.files.find((f) => f.name === "config.json");
        if (!config) throw new Error("the chosen files have no config.json");
        configText = await config.text();
      } else {
        const r = await fetch(new URL("config.json", DEFAULT_MODEL))
          .catch((e) => { throw new Error(`could not reach ${DEFAULT_MODEL} for config.json (${e.message}): check the URL and your connection`); });
        if (!r.ok) throw new Error(`config.json: HTTP ${r.status} from ${DEFAULT_MODEL}`);
        configText = await r.text();
      }
      // The memory plan, before any weight is read.
      const plan = gpu.planMemory(configText, planOptions(msg));
      post({ type: "plan", plan });
      if (!plan.fits) {
        throw new Error(`this setup needs a ${(plan.largestBufferBytes / 2 ** 20).toFixed(0)} MiB buffer, over this GPU's ` +
          `${(plan.bindingLimitBytes / 2 ** 20).toFixed(0)} MiB binding limit: lower the batch size or sequence length`);
      }
      const files = cached ? await cached.files() : msg.source.files;
      if (!msg.replayed) rewardModel = null; // a new base: the reward model was the old one's
      if (cached) post({ type: "cached", url: msg.source.url, requests: cached.requests });
      if (model) model.free();
      model = null;
      if (files) model = await Model.fromFiles(gpu, files, { quant, computeDtype, onProgress, ...(cached ? { name: cached.name } : {}) });
      else model = await Model.fromUrl(gpu, DEFAULT_MODEL, { quant, computeDtype, onProgress });
      post({ type: "loaded", info: model.info(), seconds: (performance.now() - start) / 1000 });
      // The chat's kept adapters saved for this base come back (after a lost GPU, the recovery puts them back).
      if (!msg.replayed) await chat.loaded();
      break;
    }
    case "train": {
      if (!model) throw new Error("load a model first");
      const c = msg.config;
      if (model.adapterNames().includes(ADAPTER)) model.removeAdapter(ADAPTER);
      const tokens = c.tokens ?? [];
      if (tokens.length > 0 && !["lora", "dora", "trainable_tokens"].includes(c.method)) {
        throw new Error("tokens to train: only lora, dora and trainable_tokens train token rows");
      }
      const whole = c.modulesToSave ?? [];
      if (whole.length > 0 && !["lora", "dora"].includes(c.method)) {
        throw new Error("train whole: only lora and dora train whole modules beside them (PEFT's modules_to_save)");
      }
      // A classifier or a reward model is PEFT's SEQ_CLS LoRA: a score head of its labels (one for a reward model).
      const judge = judges(c.objective);
      if (judge && !["lora", "dora"].includes(c.method)) {
        throw new Error(`${c.objective}: trains a LoRA or DoRA with a score head (PEFT's SEQ_CLS task), not ${c.method}`);
      }
      const head = judge ? { taskType: "SEQ_CLS", numLabels: c.objective === "reward" ? 1 : labelNames(c.cls.labels).length } : {};
      if (c.method === "lora" || c.method === "dora") {
        model.addLora(ADAPTER, { r: c.r, alpha: c.alpha, targets: c.targets, dropout: c.dropout ?? 0, seed: c.seed,
          useDora: c.method === "dora", trainableTokens: tokens, ...(whole.length > 0 ? { modulesToSave: whole } : {}), ...head });
      } else if (c.method === "trainable_tokens") {
        model.addTrainableTokens(ADAPTER, { tokens });
      } else if (c.method === "adalora") {
        // The page's r is the starting rank; the allocator prunes to two thirds of it (PEFT's 12 → 8) over the run.
        model.addAdaLora(ADAPTER, { initR: c.r, targetR: Math.max(1, Math.round((c.r * 2) / 3)), alpha: c.alpha,
          targets: c.targets, dropout: c.dropout ?? 0, totalStep: c.steps, seed: c.seed });
      } else if (c.method === "ia3") {
        model.addIa3(ADAPTER, { seed: c.seed }); // PEFT's modules for the model; r, alpha and targets are LoRA's
      } else if (c.method === "prompt_tuning") {
        model.addPromptTuning(ADAPTER, { seed: c.seed });
      } else if (c.method === "prefix_tuning" || c.method === "prefix_projection") {
        model.addPrefixTuning(ADAPTER, { prefixProjection: c.method === "prefix_projection", seed: c.seed });
      } else if (c.method === "p_tuning") {
        model.addPTuning(ADAPTER, { seed: c.seed });
      } else {
        model.addBottleneck(ADAPTER, { method: c.method, seed: c.seed });
      }
      model.setActiveAdapter(ADAPTER);
      run = samplesGroups(c.objective)
        ? model.startGrpo(ADAPTER, msg.data, grpoOptions(c), await grpoRewards(c, msg.rewardModel))
        : model.startTraining(ADAPTER, msg.data, trainOptions(c));
      rec.training(msg, 0);
      post({ type: "trained", judge: judges(c.objective) ? c.objective : null,
        summary: await finish(await drive(run, c, msg.evalData, msg.replayed), c) });
      break;
    }
    case "resume-checkpoint": {
      if (!model) throw new Error("load a model first");
      if (model.adapterNames().includes(ADAPTER)) model.removeAdapter(ADAPTER);
      const c = msg.config;
      run = samplesGroups(c.objective)
        ? model.resumeGrpo(ADAPTER, msg.bytes, msg.data, grpoOptions(c), await grpoRewards(c, msg.rewardModel))
        : model.resumeTraining(ADAPTER, msg.bytes, msg.data, trainOptions(c));
      model.setActiveAdapter(ADAPTER);
      rec.training(msg, run.currentStep());
      post({ type: "resumed-checkpoint", step: run.currentStep() });
      post({ type: "trained", judge: judges(c.objective) ? c.objective : null,
        summary: await finish(await drive(run, msg.config, msg.evalData, msg.replayed), c) });
      break;
    }
    case "plan-configs": {
      // The presets' verdicts: each embedded config.json planned at its base format with the page's settings.
      const plans = msg.items.map(({ key, quant, config }) => {
        try {
          return { key, quant, plan: gpu.planMemory(config, planOptions({ ...msg.settings, quant })) };
        } catch (e) {
          return { key, quant, error: String(e?.message ?? e) };
        }
      });
      post({ type: "planned", id: msg.id, plans });
      break;
    }
    case "pause": control.paused = true; post({ type: "paused" }); break;
    case "resume": control.paused = false; post({ type: "resumed" }); break;
    case "cancel": control.cancelled = true; break;
    case "destroy-gpu": rec.destroy(); break;
    case "generate": {
      if (!model) throw new Error("load a model first");
      // "after" runs with the trained adapter; "before" and the preference mode's two answers with the base model
      // (sampled with msg.sampling's temperature and seed; without it, the model's own settings from its
      // generation_config.json, greedy for the built-in model).
      const opts = { maxNewTokens: msg.maxNewTokens ?? 40, adapter: msg.which === "after" ? ADAPTER : null,
        ...(msg.sampling ?? {}), onToken: (text) => post({ type: "token", which: msg.which, text }) };
      if (msg.which === "after" && !model.adapterNames().includes(ADAPTER)) throw new Error("train an adapter first");
      const result = await model.generate(msg.prompt, opts);
      tuning.save().catch(() => {}); // a first generation tunes the decoding GEMV on a real GPU; best effort
      post({ type: "generated", which: msg.which, result });
      break;
    }
    case "judge": {
      // The trained classifier's verdict (each label's logit) or the reward model's score of one text.
      if (!model || !model.adapterNames().includes(ADAPTER)) throw new Error("train a classifier or a reward model first");
      const result = msg.kind === "reward"
        ? { score: (await model.score([msg.text], { adapter: ADAPTER }))[0] }
        : (await model.classify([msg.text], { adapter: ADAPTER }))[0];
      post({ type: "judged", kind: msg.kind, text: msg.text, result });
      break;
    }
    case "download": {
      if (!model || !model.adapterNames().includes(ADAPTER)) throw new Error("train an adapter first");
      const zip = await model.exportAdapterZip(ADAPTER);
      post({ type: "zip", bytes: zip }, [zip.buffer]);
      break;
    }
    case "download-gguf": {
      if (!model || !model.adapterNames().includes(ADAPTER)) throw new Error("train an adapter first");
      // Each 4 MiB chunk becomes a Blob at once (the browser may keep it on disk): the file is never
      // whole in this worker's memory, nor in wasm's, which holds one tensor at a time.
      const parts = [];
      const opts = { kind: msg.kind, type: msg.ggufType, tokenizerPre: msg.tokenizerPre };
      await model.exportGguf(ADAPTER, opts, (chunk) => parts.push(new Blob([chunk])));
      post({ type: "gguf", kind: msg.kind, ggufType: msg.ggufType, blob: new Blob(parts, { type: "application/octet-stream" }) });
      break;
    }
    default:
      if (!(await chat.handle(msg))) throw new Error(`unknown message ${msg.type}`);
  }
}

// One message at a time, except the run controls, which act between steps (and the device's destruction,
// which acts at once). A call that failed because the GPU was lost is no error: the recovery redoes it.
let queue = Promise.resolve();
const settle = async (context, err, msg) => {
  if (await rec.isLoss(err)) rec.interrupted(msg);
  else fail(context, err);
};
const enqueue = (context, fn, msg) => { queue = queue.then(fn).catch((err) => settle(context, err, msg)); };
self.onmessage = (e) => {
  const msg = e.data;
  // Planning only reads the GPU's limits: it answers at once, even during a load or a run, once init is done.
  if (["pause", "resume", "cancel", "chat-stop", "destroy-gpu"].includes(msg.type) || (msg.type === "plan-configs" && gpu)) {
    handle(msg).catch((err) => fail(msg.context ?? msg.type, err));
    return;
  }
  enqueue(msg.context ?? msg.type, () => handle(msg), msg);
};
self.onerror = (e) => fail("worker", e.message ?? e);
self.onunhandledrejection = (e) => fail("worker", e.reason);
