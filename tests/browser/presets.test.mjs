// The model presets, the URL and token fields, the page at phone width and by
// keyboard, and the training ETA (issue 18, items 2 and 7). Nothing leaves
// this machine: every request to another origin is answered by a local
// stand-in or refused, and recorded.
//
//   node --test --test-timeout=900000 tests/browser/presets.test.mjs
import fs from "node:fs";
import path from "node:path";
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { serve } from "../../www/serve.mjs";
import { root, outDir, launch, open } from "./common.mjs";
import { modelBaseUrl } from "../../www/presets.js";
import { stepClock, duration } from "../../www/eta.js";

const out = outDir("presets");
const { presets } = JSON.parse(fs.readFileSync(path.join(root, "www", "presets.json"), "utf8"));
const MiB = (b) => `${(b / 2 ** 20).toFixed(1)} MiB`;

let server, base, browser;
before(async () => {
  server = await serve(0);
  base = `http://127.0.0.1:${server.address().port}/`;
  browser = await launch();
});
after(async () => {
  await browser?.close();
  server?.close();
});

/**
 * The demo page with every request to another origin routed: `hub(route)`
 * answers huggingface.co's (default: refused), anything else is refused.
 * `offsite` records them all, with their headers.
 */
async function demo({ hub, viewport } = {}) {
  // open() listens for console errors from the start; the routes go in before the page itself loads.
  const opened = await open(browser, "about:blank");
  const { page } = opened;
  if (viewport) await page.setViewportSize(viewport);
  const offsite = [];
  await page.route((url) => url.hostname !== "127.0.0.1", async (route) => {
    const r = route.request();
    offsite.push({ url: r.url(), method: r.method(), headers: await r.allHeaders() });
    if (hub && new URL(r.url()).hostname.endsWith("huggingface.co")) return hub(route);
    return route.abort("blockedbyclient");
  });
  await page.goto(base);
  return { ...opened, offsite };
}

/** planMemory of the npm package, on this GPU but apart from the demo page (whose CSP keeps wasm in its worker). */
let planner = null;
async function planInPage(config, opts) {
  if (!planner) {
    planner = await browser.newPage();
    await planner.goto(`${base}pkg/package.json`);
    await planner.evaluate(async () => {
      const { default: init, Gpu } = await import("/pkg/webpeft.js");
      await init();
      globalThis.gpu = await Gpu.create();
    });
  }
  return planner.evaluate(([config, opts]) => gpu.planMemory(JSON.stringify(config), opts), [config, opts]);
}

const planned = async (page, after = 0) => {
  await page.waitForFunction((n) => Number(document.querySelector("#presets").dataset.planned ?? 0) > n, after, { timeout: 120_000 });
  return Number(await page.getAttribute("#presets", "data-planned"));
};

/** Each preset's row: its text and the total bytes the page planned. */
const rows = (page) => page.$$eval("#presets li", (lis) => lis.map((li) => ({
  id: li.dataset.preset, text: li.textContent, totalBytes: Number(li.dataset.totalBytes), fits: li.dataset.fits })));

/** All the page can store (its URL, cookies, localStorage, sessionStorage, every IndexedDB store) as text. */
const storedText = (page) => page.evaluate(async () => {
  const dump = [location.href, document.cookie, JSON.stringify({ ...localStorage }), JSON.stringify({ ...sessionStorage })];
  for (const { name } of await indexedDB.databases()) {
    const db = await new Promise((ok, ko) => { const r = indexedDB.open(name); r.onsuccess = () => ok(r.result); r.onerror = () => ko(r.error); });
    for (const store of db.objectStoreNames) {
      const all = await new Promise((ok) => { const r = db.transaction(store).objectStore(store).getAll(); r.onsuccess = () => ok(r.result); });
      dump.push(JSON.stringify(all, (k, v) => (ArrayBuffer.isView(v) ? `<${v.byteLength} bytes>` : v)));
    }
    db.close();
  }
  return dump.join("\n");
});

test("URL shapes: the Hub's resolve folders pass; page, /tree/, /blob/ and file links get the resolve form suggested", () => {
  const resolve = "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/resolve/main/";
  assert.equal(modelBaseUrl(` ${resolve} `), resolve);
  assert.equal(modelBaseUrl(resolve.slice(0, -1)), resolve, "the trailing slash is added");
  assert.equal(modelBaseUrl("https://example.org/models/tiny"), "https://example.org/models/tiny/");
  for (const [typed, why, suggestion] of [
    ["https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct", "is the model's page on the Hub", resolve],
    ["https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/tree/main", "is a /tree/ link", resolve],
    ["https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json", "is a /blob/ link", resolve],
    ["https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/resolve/main/model.safetensors", "is a file", resolve],
    ["https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/tree/v1.0", "is a /tree/ link", "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/resolve/v1.0/"],
    ["https://example.org/models/tiny/config.json", "is a file", "https://example.org/models/tiny/"],
  ]) {
    assert.throws(() => modelBaseUrl(typed), (e) => e.message.startsWith(`${typed} ${why}`) && e.message.endsWith(suggestion),
      `${typed} → ${why}, ${suggestion}`);
  }
  assert.throws(() => modelBaseUrl("huggingface.co/x/y"), /is not a URL/);
  assert.throws(() => modelBaseUrl("ftp://example.org/m/"), /https:\/\//);
  assert.throws(() => modelBaseUrl("https://huggingface.co/datasets/a/b"), /dataset, not a model/);
});

test("ETA: nothing from step 1's compile, 'estimating…' until two gaps are timed, then the median gap times the steps left", () => {
  let t = 0;
  const clock = stepClock(() => t * 1000);
  const eta = (step, at) => { t = at; return clock.step({ step, totalSteps: 10 }).text; };
  assert.equal(eta(1, 60), "estimating…", "step 1 took a minute (compiling): no figure from it");
  assert.equal(eta(2, 62), "estimating…", "one gap is not enough");
  assert.equal(eta(3, 64), "14 s", "7 steps left × 2 s");
  assert.equal(eta(4, 76), "12 s", "a 12 s gap (an evaluation) does not swing the median: 6 × 2 s");
  clock.skip(); // a pause ends
  assert.equal(eta(5, 500), "10 s", "the gap across the pause is not timed");
  clock.reset(); // a resumed run compiles again
  assert.equal(eta(6, 600), "estimating…");
  assert.deepEqual([duration(59.4), duration(200), duration(3 * 3600 + 600)], ["59 s", "3 min 20 s", "3 h 10 min"]);
});

test("presets: download size and this GPU's planner verdict per model, following the base format and the settings, with nothing fetched", async () => {
  const { page, problems, offsite } = await demo();
  let n = await planned(page);
  const settings = { method: "lora", r: 8, batchSize: 4, seqLen: 32 }; // the form's defaults
  const check = async (quant) => {
    const shown = await rows(page);
    assert.deepEqual(shown.map((r) => r.id), presets.map((p) => p.id));
    const totals = {};
    for (const [i, p] of presets.entries()) {
      const plan = await planInPage(p.config, { ...settings, quant });
      const row = shown[i];
      assert.equal(row.totalBytes, plan.totalBytes, `${p.id} ${quant}: the planner's total`);
      const mb = p.files.reduce((s, f) => s + f.bytes, 0);
      assert.match(row.text, new RegExp(`download ${(mb >= 1e9 ? (mb / 1e9).toFixed(2) + " GB" : (mb / 1e6).toFixed(1) + " MB")};`));
      assert.ok(row.text.includes(`as ${quant} `), `${p.id}: the verdict names the base format: ${row.text}`);
      assert.ok(row.text.includes(`needs ${MiB(plan.totalBytes)} on the GPU (weights ${MiB(plan.weightBytes)} / adapter ${MiB(plan.adapterBytes)} / ` +
        `optimizer ${MiB(plan.optimizerBytes)} / activations ${MiB(plan.activationBytes)})`), `${p.id}: ${row.text}`);
      assert.match(row.text, plan.fits ? /\); fits — largest buffer [\d.]+ MiB of this GPU's 1024\.0 MiB per binding\./ : /does not fit because/);
      assert.equal(row.fits, String(plan.fits));
      totals[p.id] = plan.totalBytes;
    }
    return totals;
  };
  const f32 = await check("f32");
  assert.match((await rows(page)).find((r) => r.id === "llama-3.2-1b-instruct").text, /gated: accept the Llama 3\.2 Community License/);
  await page.selectOption("#quant", "nf4");
  n = await planned(page, n);
  const nf4 = await check("nf4");
  for (const p of presets) assert.ok(nf4[p.id] < f32[p.id], `${p.id}: nf4 ${nf4[p.id]} < f32 ${f32[p.id]}`);
  // A setup over the binding limit: one step of 64 × 4096 tokens has an MLP activation over 1 GiB.
  // Both fields at once, then one change: filling one after the other would plan 64 × 32 in between (on the
  // first field's blur), and the wait below could see that plan instead of this one.
  await page.evaluate(() => {
    document.querySelector("#config [name=batchSize]").value = "64";
    document.querySelector("#config [name=seqLen]").value = "4096";
    document.querySelector("#config [name=seqLen]").dispatchEvent(new Event("change", { bubbles: true }));
  });
  n = await planned(page, n);
  const big = await rows(page);
  assert.ok(big.every((r) => r.fits === "false"), JSON.stringify(big.map((r) => r.fits)));
  assert.match(big[0].text, /does not fit because its largest buffer, [\d.]+ MiB, is over this GPU's 1024\.0 MiB per binding: lower the batch or the sequence length/);
  assert.equal(big[0].totalBytes, (await planInPage(presets[0].config, { method: "lora", r: 8, batchSize: 64, seqLen: 4096, quant: "nf4" })).totalBytes);
  await page.screenshot({ path: path.join(out, "presets.png"), fullPage: true });
  assert.deepEqual(offsite, [], "nothing left the machine while the presets were planned");
  assert.deepEqual(problems, []);
});

test("a preset's click fills its resolve URL and loads from huggingface.co with the token (config.json request); a /blob/ link gets the resolve form; the token is stored nowhere, not in a run's autosave either", async () => {
  const TOKEN = "hf_presetsTestToken123";
  const hub = (route) => route.fulfill({ status: 401, contentType: "text/plain", body: "Access to model is restricted.",
    headers: { "access-control-allow-origin": "*" } });
  const { page, problems, offsite } = await demo({ hub });
  await planned(page);
  await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });

  // A /blob/ link: refused in the page with the URL to use, and nothing fetched.
  await page.fill("#model-url", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json");
  assert.equal(await page.isChecked("input[name=source][value=url]"), true, "typing a URL picks the URL source");
  await page.click("#load");
  await page.waitForSelector("#model-error:not([hidden])");
  assert.match(await page.textContent("#model-error"),
    /is a \/blob\/ link .*: use https:\/\/huggingface\.co\/HuggingFaceTB\/SmolLM2-135M-Instruct\/resolve\/main\/$/);
  assert.deepEqual(offsite, []);

  // One click on the gated preset, with a token: the resolve URL, a worker allowed to reach the Hub, the
  // token on the config.json request, and the Hub's refusal explained.
  await page.fill("#hf-token", TOKEN);
  await page.click("#presets li[data-preset='llama-3.2-1b-instruct'] button");
  assert.equal(await page.inputValue("#model-url"), "https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct/resolve/main/");
  await page.waitForSelector("#model-error:not([hidden])", { timeout: 120_000 });
  assert.match(await page.textContent("#model-error"), /^config\.json: HTTP 401 from https:\/\/huggingface\.co\/meta-llama\/Llama-3\.2-1B-Instruct\/resolve\/main\/config\.json: the repository is gated or private; .*access token/);
  const configRequest = offsite.find((r) => r.url === "https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct/resolve/main/config.json" && r.method === "GET");
  assert.ok(configRequest, `the config.json request: ${JSON.stringify(offsite.map((r) => r.url))}`);
  assert.equal(configRequest.headers.authorization, `Bearer ${TOKEN}`);
  assert.equal(await page.getAttribute("body", "data-phase"), "idle");
  // The presets are planned again by the new worker.
  await page.waitForFunction(() => [...document.querySelectorAll("#presets li")].every((li) => li.dataset.totalBytes));

  assert.equal((await storedText(page)).includes(TOKEN), false, "the token is stored nowhere");

  // Without a token, no Authorization header.
  await page.fill("#hf-token", "");
  const before = offsite.length;
  await page.click("#presets li[data-preset='smollm2-135m-instruct'] button");
  await page.waitForFunction(() => /SmolLM2-135M-Instruct/.test(document.querySelector("#model-error").textContent), null, { timeout: 120_000 });
  const plain = offsite.slice(before).find((r) => r.url.endsWith("/SmolLM2-135M-Instruct/resolve/main/config.json") && r.method === "GET");
  assert.ok(plain);
  assert.equal(plain.headers.authorization, undefined);
  assert.ok(offsite.every((r) => new URL(r.url).hostname === "huggingface.co"), JSON.stringify(offsite.map((r) => r.url)));

  // A run from a URL with a token (the toy model, served here): its autosave in IndexedDB keeps the URL, not the token.
  await page.fill("#model-url", `${base}default-model/`);
  await page.fill("#hf-token", TOKEN);
  await page.click("#load");
  await page.waitForFunction(() => document.querySelector("#load-status").textContent.startsWith("loaded"), null, { timeout: 120_000 });
  await page.fill("#config [name=steps]", "50");
  await page.click("#train");
  await page.waitForSelector("body[data-autosaved='4']", { timeout: 300_000 });
  await page.click("#cancel");
  await page.waitForSelector("body[data-trained=cancelled]", { timeout: 300_000 });
  const stored = await storedText(page);
  assert.ok(stored.includes(`"url":"${base}default-model/"`), "the autosave holds the run's source");
  assert.equal(stored.includes(TOKEN), false, "the token is stored nowhere");
  assert.deepEqual(problems.filter((p) => !/401|Failed to load resource/.test(p)), []);
});

test("at phone width (390 × 844): no sideways scroll, the controls visible and labelled, Tab reaches Load, Train and Generate; the ETA waits for timed steps", async () => {
  const W = 390;
  const { page, problems } = await demo({ viewport: { width: W, height: 844 } });
  await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
  await planned(page);
  const overflow = () => page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
  const [scroll, client] = await overflow();
  assert.ok(scroll <= client, `the page is ${scroll} px wide in a ${client} px window`);
  for (const sel of ["#model-url", "#hf-token", "#quant", "#load", "#presets li button", "#config [name=r]", "#data", "#train", "#loss-chart", "#prompt", "#generate"]) {
    const box = await page.locator(sel).first().boundingBox();
    assert.ok(box && box.width > 0 && box.x >= 0 && box.x + box.width <= W + 0.5, `${sel} within the screen: ${JSON.stringify(box)}`);
  }
  const chart = await page.locator("#loss-chart").boundingBox();
  assert.ok(Math.abs(chart.height / chart.width - 200 / 640) < 0.02, `the chart scales with its width: ${JSON.stringify(chart)}`);
  const unlabelled = await page.$$eval("input, select, textarea, button", (els) => els
    .filter((el) => el.type !== "hidden" && !(el.labels?.length || el.getAttribute("aria-label") || (el.tagName === "BUTTON" && el.textContent.trim())))
    .map((el) => el.id || el.name || el.outerHTML.slice(0, 60)));
  assert.deepEqual(unlabelled, [], "every control has a label");

  // Keyboard: Tab from the top of the page reaches the three main buttons, each with a visible focus ring.
  await page.evaluate(() => document.activeElement?.blur());
  const reached = {};
  for (let i = 0; i < 120 && Object.keys(reached).length < 3; i++) {
    await page.keyboard.press("Tab");
    const f = await page.evaluate(() => ({ id: document.activeElement.id, outline: getComputedStyle(document.activeElement).outlineStyle }));
    if (["load", "train", "generate"].includes(f.id)) reached[f.id] = f.outline;
  }
  assert.deepEqual(reached, { load: "solid", train: "solid", generate: "solid" });

  // The ETA: "estimating…" for steps 1 and 2 (step 1 compiles; one timed gap is not enough), a time from step 3.
  await page.fill("#config [name=steps]", "5");
  // A half-typed URL (it picks the URL source) does not change what Train trains: the model loaded.
  await page.fill("#model-url", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/ma");
  await page.evaluate(() => {
    window.statuses = [];
    new MutationObserver(() => window.statuses.push(document.querySelector("#train-status").textContent))
      .observe(document.querySelector("#train-status"), { childList: true, characterData: true, subtree: true });
  });
  await page.focus("#train");
  await page.keyboard.press("Enter");
  await page.waitForSelector("body[data-trained=done]", { timeout: 180_000 }); // five toy steps take ~10 s here
  const statuses = await page.evaluate(() => window.statuses);
  const at = (step) => statuses.find((s) => s.startsWith(`step ${step}/5 `));
  for (const step of [1, 2]) assert.match(at(step), /· token accuracy [\d.]+% · [\d.]+ tokens\/s · ETA estimating…/, `step ${step}`);
  for (const step of [3, 4]) assert.match(at(step), /· ETA (\d+ s|\d+ min \d+ s)$/, `step ${step}`);
  assert.match(at(5), /· ETA 0 s/);
  fs.writeFileSync(path.join(out, "statuses.json"), JSON.stringify(statuses, null, 2));
  assert.ok((await overflow())[0] <= client, "still no sideways scroll with the chart drawn");
  await page.screenshot({ path: path.join(out, "phone.png"), fullPage: true });
  assert.deepEqual(problems, []);
});
