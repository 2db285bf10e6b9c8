// A lost GPU and a thin WebGPU, in the real browser (Chromium headless,
// WebGPU on SwiftShader). The device is lost on purpose with the worker's
// destroy-gpu message (Gpu.destroy(), i.e. GPUDevice.destroy()); the page must
// say so, get a new device, reload the model and finish the run from its last
// autosave with the adapter an uninterrupted run makes. Thin WebGPU is faked in
// the page (the worker keeps the real adapter): no adapter at all, or one
// without shader-f16 and subgroups and with WebGPU's smallest buffer limits.
// Outputs (zips, timings) go to tests/browser/out/recovery/.
//
//   node --test --test-timeout=900000 tests/browser/recovery.test.mjs
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { serve } from "../../www/serve.mjs";
import { launch, open, outDir, unzip, safetensors } from "./common.mjs";

const out = outDir("recovery");
const server = await serve(0);
const base = `http://127.0.0.1:${server.address().port}/`;
const browser = await launch();
const timings = {};
test.after(async () => {
  await browser.close();
  server.close();
  fs.writeFileSync(path.join(out, "timings.json"), JSON.stringify(timings, null, 2));
  console.log("timings:", JSON.stringify(timings));
});

/** The page's adapter download, as name → Float32Array, also kept in out/<name>.zip. */
async function adapterOf(page, name) {
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  const file = path.join(out, `${name}.zip`);
  await download.saveAs(file);
  return safetensors(unzip(fs.readFileSync(file))["adapter_model.safetensors"]);
}

function maxAbsDiff(a, b) {
  let worst = 0;
  assert.deepEqual(Object.keys(b).sort(), Object.keys(a).sort());
  for (const [name, t] of Object.entries(a)) {
    for (let i = 0; i < t.data.length; i++) worst = Math.max(worst, Math.abs(t.data[i] - b[name].data[i]));
  }
  return worst;
}

/** Loses the page's GPU: the worker's destroy-gpu message, dispatched inside the worker. */
async function destroyGpu(page) {
  const workers = page.workers();
  assert.equal(workers.length, 1, "one worker");
  await workers[0].evaluate(() => self.dispatchEvent(new MessageEvent("message", { data: { type: "destroy-gpu" } })));
}

const trainToEnd = async (page) => {
  await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
  await page.click("#train");
};

let uninterrupted = null;
let lostPage = null;

test("the default run, uninterrupted (the reference)", async () => {
  const { page, problems } = await open(browser, base);
  const start = Date.now();
  await trainToEnd(page);
  await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
  timings.uninterruptedTrainSeconds = (Date.now() - start) / 1000;
  uninterrupted = await adapterOf(page, "uninterrupted");
  assert.deepEqual(problems, []);
  await page.close();
});

test("a GPU lost mid-training: the page says so, gets a new device, reloads the model, resumes from the autosave and ends with the uninterrupted adapter", async () => {
  assert.ok(uninterrupted, "the reference run ran first");
  const { page, problems } = await open(browser, base);
  lostPage = { page, problems };
  const start = Date.now();
  await trainToEnd(page);
  // After the autosave at step 4 and at least one step past it, before the next autosave (step 8).
  await page.waitForFunction(() => document.body.dataset.autosaved === "4" && Number(document.body.dataset.steps) >= 5,
    null, { timeout: 600_000, polling: 50 });
  const lostAtStep = Number(await page.getAttribute("body", "data-steps"));
  await destroyGpu(page);
  await page.waitForSelector("body[data-gpu-lost='1']", { timeout: 60_000 });
  const notice = await page.textContent("#gpu-notice");
  assert.match(notice, /The GPU stopped working \(Destroyed: .*\).*Training will go on from step 4, the last autosave/s, notice);
  assert.equal(await page.isDisabled("#train"), true, "no new run while recovering");
  await page.waitForSelector("body[data-gpu-recovered='1']", { timeout: 120_000 });
  assert.match(await page.textContent("#gpu-notice"), /replaced: a new device and the model reloaded in [\d.]+ s\. Training goes on from step 4/);
  await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
  timings.lostAtStep = lostAtStep;
  timings.recoverySeconds = Number(await page.getAttribute("body", "data-recovery-seconds"));
  timings.lostRunSeconds = (Date.now() - start) / 1000;
  const losses = JSON.parse(await page.getAttribute("body", "data-losses"));
  assert.equal(losses.length, 12, `one loss per step, the recomputed ones once: ${losses}`);
  const recovered = await adapterOf(page, "recovered");
  const worst = maxAbsDiff(uninterrupted, recovered);
  timings.maxAbsDiffRecoveredVsUninterrupted = worst;
  assert.ok(worst <= 1e-6, `recovered vs uninterrupted: max |diff| ${worst}`);
  assert.deepEqual(problems, []);
});

test("a GPU lost while idle: the model is reloaded, keeps the trained adapter and the chat's kept one, and generates", async () => {
  assert.ok(lostPage, "the mid-training test ran first");
  const { page, problems } = lostPage;
  const before = await adapterOf(page, "before-idle-loss");
  await page.fill("#keep-name", "kept-before-loss");
  await page.click("#keep-adapter");
  await page.waitForSelector(`body[data-kept='["kept-before-loss"]'][data-phase=idle]`);
  const start = Date.now();
  await destroyGpu(page);
  await page.waitForSelector("body[data-gpu-recovered='2'][data-phase=idle]", { timeout: 120_000 });
  timings.idleRecoverySeconds = (Date.now() - start) / 1000;
  assert.match(await page.textContent("#gpu-notice"), /replaced: .* The trained adapter is kept\./);
  await page.click("#generate");
  await page.waitForSelector("body[data-after=done]", { timeout: 300_000 });
  assert.ok((await page.textContent("#before")).length > 0 && (await page.textContent("#after")).length > 0, "both generations");
  assert.equal(maxAbsDiff(before, await adapterOf(page, "after-idle-loss")), 0, "the adapter survives the loss");
  // The kept adapter is back on the new device's model: the chat answers with it.
  assert.equal(await page.getAttribute("body", "data-kept"), '["kept-before-loss"]');
  await page.selectOption("#chat-right-adapter", "kept:kept-before-loss");
  await page.fill("#chat-max-tokens", "4");
  await page.fill("#chat-input", "Describe the robot.");
  await page.press("#chat-input", "Enter");
  await page.waitForFunction(() => ["turn-1", "failed"].includes(document.body.dataset.chat), null, { timeout: 300_000 });
  assert.equal(await page.getAttribute("body", "data-chat"), "turn-1", `chat error: ${await page.textContent("#chat-error")}`);
  assert.deepEqual(problems, []);
  await page.close();
});

test("a paused run that loses its GPU comes back paused, and resumed ends with the uninterrupted adapter", async () => {
  assert.ok(uninterrupted, "the reference run ran first");
  const { page, problems } = await open(browser, base);
  await trainToEnd(page);
  await page.waitForSelector("body[data-autosaved='4']", { timeout: 600_000 });
  await page.click("#pause");
  await page.waitForSelector("body[data-phase=paused]");
  await destroyGpu(page);
  await page.waitForSelector("body[data-gpu-recovered='1']", { timeout: 120_000 });
  await page.waitForSelector("body[data-phase=paused]", { timeout: 60_000 });
  const steps = Number(await page.getAttribute("body", "data-steps"));
  await new Promise((ok) => setTimeout(ok, 1500));
  assert.equal(Number(await page.getAttribute("body", "data-steps")), steps, "no step while paused");
  assert.equal(await page.textContent("#pause"), "Resume");
  await page.click("#pause");
  await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
  const worst = maxAbsDiff(uninterrupted, await adapterOf(page, "paused-recovered"));
  assert.ok(worst <= 1e-6, `paused, recovered and resumed vs uninterrupted: max |diff| ${worst}`);
  assert.deepEqual(problems, []);
  await page.close();
});

test("a GPU lost while a reload's resume is loading the model: the resume goes on after the recovery, to the uninterrupted adapter", async () => {
  assert.ok(uninterrupted, "the reference run ran first");
  const { page, problems } = await open(browser, base);
  await trainToEnd(page);
  await page.waitForSelector("body[data-autosaved='4']", { timeout: 600_000 });
  await page.reload();
  await page.waitForSelector("body[data-model=loaded][data-phase=idle]", { timeout: 120_000 });
  await page.waitForSelector("#resume-banner:not([hidden])", { timeout: 60_000 });
  await page.click("#resume-run"); // the worker loads the model again, then resumes from the checkpoint
  await destroyGpu(page); // acts at once, while that load runs
  await page.waitForSelector("body[data-gpu-recovered='1']", { timeout: 120_000 });
  await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
  assert.equal(await page.textContent("#train-error"), "", "the lost load and resume are no errors");
  const worst = maxAbsDiff(uninterrupted, await adapterOf(page, "resume-interrupted"));
  assert.ok(worst <= 1e-6, `resume interrupted by a loss vs uninterrupted: max |diff| ${worst}`);
  assert.deepEqual(problems, []);
  await page.close();
});

test("a GPU lost before the first autosave: the run starts again and ends with the uninterrupted adapter", async () => {
  assert.ok(uninterrupted, "the reference run ran first");
  const { page, problems } = await open(browser, base);
  await trainToEnd(page);
  await page.waitForFunction(() => Number(document.body.dataset.steps) >= 2, null, { timeout: 600_000, polling: 50 });
  assert.equal(await page.getAttribute("body", "data-autosaved"), null, "lost before the first autosave");
  await destroyGpu(page);
  await page.waitForSelector("body[data-gpu-lost='1']", { timeout: 60_000 });
  assert.match(await page.textContent("#gpu-notice"), /Training will start again from its first step \(there was no autosave yet\)/);
  await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
  assert.match(await page.textContent("#gpu-notice"), /Training starts again\./);
  assert.equal(JSON.parse(await page.getAttribute("body", "data-losses")).length, 12);
  const worst = maxAbsDiff(uninterrupted, await adapterOf(page, "restarted"));
  assert.ok(worst <= 1e-6, `restarted vs uninterrupted: max |diff| ${worst}`);
  assert.deepEqual(problems, []);
  await page.close();
});

test("no WebGPU adapter (requestAdapter() gives null): a readable error says what to do, and no worker starts", async () => {
  const { page, problems } = await open(browser, base, {
    initScript: () => { navigator.gpu.requestAdapter = async () => null; },
  });
  await page.waitForSelector("#error:not([hidden])", { timeout: 60_000 });
  const text = await page.textContent("#error");
  assert.match(text, /WebGPU is present, but the browser offered no GPU adapter/);
  assert.match(text, /hardware acceleration/);
  assert.match(text, /chrome:\/\/gpu/);
  assert.equal(page.workers().length, 0, "no worker was started");
  assert.equal(await page.isDisabled("#load"), true);
  assert.deepEqual(problems, []);
  await page.close();
});

test("an adapter without shader-f16 or subgroups and with WebGPU's smallest buffer limits: each is named, f16 compute is off with its reason", async () => {
  const { page, problems } = await open(browser, base, {
    initScript: () => {
      const request = navigator.gpu.requestAdapter.bind(navigator.gpu);
      navigator.gpu.requestAdapter = async (...args) => {
        const adapter = await request(...args);
        if (!adapter) return adapter;
        const limits = {};
        for (const k in adapter.limits) limits[k] = adapter.limits[k];
        Object.assign(limits, { maxStorageBufferBindingSize: 128 * 2 ** 20, maxBufferSize: 256 * 2 ** 20 });
        const features = new Set([...adapter.features].filter((f) => f !== "shader-f16" && f !== "subgroups"));
        Object.defineProperty(adapter, "limits", { value: limits });
        Object.defineProperty(adapter, "features", { value: features });
        return adapter;
      };
    },
  });
  await page.waitForSelector("#features:not([hidden])", { timeout: 60_000 });
  const note = async (id) => page.textContent(`#features [data-feature=${id}]`);
  assert.match(await note("shader-f16"), /no shader-f16.*f16 compute option is off/);
  assert.match(await note("limits"), /at most 128 MiB \(maxStorageBufferBindingSize 128 MiB, maxBufferSize 256 MiB/);
  assert.match(await note("limits"), /SmolLM2-135M 21845, .*Llama-3.2-1B and 3B 4096, Llama-3.1-8B 2340 tokens/);
  assert.match(await note("subgroups"), /do not need them/);
  assert.equal(await page.isDisabled("#compute"), true);
  assert.equal(await page.inputValue("#compute"), "f32");
  assert.match(await page.getAttribute("#compute", "title"), /shader-f16/);
  // The page goes on: the worker has the real adapter.
  await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
  assert.deepEqual(problems, []);
  await page.close();
});

test("the library: after Gpu.destroy(), isLost() is true, lost resolves with the reason, and calls reject with a DeviceLostError", async () => {
  // In the page's worker, whose Content-Security-Policy lets WebAssembly compile (the page's does not).
  const { page, problems } = await open(browser, base);
  await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
  const seen = await page.workers()[0].evaluate(async () => {
    const { default: init, Gpu, Model } = await import(new URL("pkg/webpeft.js", location.href).href);
    await init();
    const gpu = await Gpu.create();
    const model = await Model.fromUrl(gpu, new URL("default-model/", location.href).href);
    const data = '{"text": "The little robot walked home."}';
    const before = (await model.evaluate(data)).loss;
    const wasLost = gpu.isLost();
    gpu.destroy();
    const reason = await gpu.lost;
    const failure = await model.evaluate(data).then(() => null, (e) => ({ name: e.name, message: e.message }));
    const loading = await Model.fromUrl(gpu, new URL("default-model/", location.href).href)
      .then(() => null, (e) => ({ name: e.name, message: e.message }));
    return { before, wasLost, isLost: gpu.isLost(), reason, failure, loading };
  });
  assert.ok(Number.isFinite(seen.before) && seen.wasLost === false, JSON.stringify(seen));
  assert.equal(seen.isLost, true);
  assert.match(seen.reason, /^Destroyed: /);
  for (const f of [seen.failure, seen.loading]) {
    assert.equal(f?.name, "DeviceLostError", JSON.stringify(seen));
    assert.match(f.message, /^the GPU device was lost: Destroyed/);
  }
  assert.deepEqual(problems, []);
  await page.close();
});
