// The chat's kept adapters saved in the browser (www/kept-store.js, IndexedDB) in headless Chromium with WebGPU
// on SwiftShader: an adapter kept on the built-in model comes back after a reload and answers as before; a saved
// entry that no longer imports is named and skipped; a lost GPU's recovery puts them back; another base shows none
// of them; Remove deletes one for good.
// A storage that refuses to save (full, or failing) leaves the adapter kept for the visit, with the error shown.
//
//   node --test --test-timeout=900000 tests/browser/kept.test.mjs
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { serve } from "../../www/serve.mjs";
import { root, outDir, launch, open, unzip } from "./common.mjs";

const out = outDir("kept");
// A second base: the toy model again, served beside the page and loaded by URL.
fs.cpSync(path.join(root, "www", "default-model"), path.join(out, "copy"), { recursive: true });
const server = await serve(0, [["/pkg/", path.join(root, "pkg")], ["/copy/", path.join(out, "copy")], ["/", path.join(root, "www")]]);
const base = `http://127.0.0.1:${server.address().port}/`;
test.after(() => server.close());

const MAX = 16;

/** Waits for a load to end with the kept adapters saved for the base back on it; their names. */
async function restored(page) {
  await page.waitForSelector("body[data-model=loaded][data-phase=idle][data-kept-restored=true]", { timeout: 120_000 });
  return JSON.parse(await page.getAttribute("body", "data-kept"));
}

async function loadSource(page, kind, url) {
  await page.evaluate(() => { delete document.body.dataset.model; });
  await page.check(`input[name=source][value=${kind}]`);
  if (url) await page.fill("#model-url", url);
  await page.click("#load");
  return restored(page);
}

async function train(page) {
  await page.evaluate(() => { delete document.body.dataset.trained; });
  await page.locator("#config [name=steps]").fill("6");
  await page.locator("#config [name=lr]").fill("0.05");
  await page.fill("#data", fs.readFileSync(path.join(root, "www", "default-data.jsonl"), "utf8"));
  await page.click("#train");
  await page.waitForSelector("body[data-trained=done][data-phase=idle]", { timeout: 600_000 });
}

async function keep(page, name) {
  await page.fill("#keep-name", name);
  await page.click("#keep-adapter");
}

/** One greedy turn, the base on the left and the kept adapter `name` on the right: the two answers. */
async function ask(page, name) {
  await page.click("#chat-clear");
  await page.selectOption("#chat-left-adapter", "base");
  await page.selectOption("#chat-right-adapter", `kept:${name}`);
  await page.fill("#chat-temperature", "0");
  await page.fill("#chat-max-tokens", String(MAX));
  await page.fill("#chat-input", "Tell me about the garden.");
  await page.press("#chat-input", "Enter");
  await page.waitForFunction(() => ["turn-1", "failed"].includes(document.body.dataset.chat), null, { timeout: 300_000 });
  assert.equal(await page.getAttribute("body", "data-chat"), "turn-1", `chat error: ${await page.textContent("#chat-error")}`);
  const [left, right] = await Promise.all(["left", "right"].map((side) => page.textContent(`#chat-${side} .assistant`)));
  return { left, right };
}

test("kept adapters are saved with their base: back after a reload with the same answers, not on another base, gone once removed", async () => {
  const browser = await launch();
  try {
    const { page, problems, external } = await open(browser, base);
    assert.deepEqual(await restored(page), [], "nothing saved yet");
    await train(page);
    await keep(page, "robot");
    await page.waitForSelector(`body[data-kept='["robot"]'][data-phase=idle]`);
    const before = await ask(page, "robot");
    assert.notEqual(before.right, before.left, "the kept adapter answers otherwise than the base");

    // Download: the adapter's PEFT files as one zip.
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("button[aria-label='Download kept adapter robot']")]);
    assert.equal(download.suggestedFilename(), "webpeft-kept-robot.zip");
    const zip = path.join(out, "robot.zip");
    await download.saveAs(zip);
    assert.deepEqual(Object.keys(unzip(fs.readFileSync(zip))).sort(), ["adapter_config.json", "adapter_model.safetensors"]);

    // A saved entry that no longer imports (its weights cut short), as a damaged disk or another page version might leave.
    await page.evaluate(() => new Promise((ok, ko) => {
      const open = indexedDB.open("webpeft-kept", 1);
      open.onerror = () => ko(open.error);
      open.onsuccess = () => {
        const store = open.result.transaction("adapters", "readwrite").objectStore("adapters");
        const get = store.get(["default", "robot"]);
        get.onsuccess = () => {
          const { files } = get.result;
          const cut = files["adapter_model.safetensors"].slice(0, 100);
          store.put({ base: "default", name: "cut", savedAt: Date.now(), files: { ...files, "adapter_model.safetensors": cut } }, ["default", "cut"]);
          store.transaction.oncomplete = () => { open.result.close(); ok(); };
        };
      };
    }));

    // A reload: the saved adapter is back on the built-in model, read from this browser, and answers as before.
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));
    await page.reload();
    assert.deepEqual(await restored(page), ["robot"], "the saved one is back");
    assert.match(await page.textContent("#chat-error"), /^the kept adapter cut saved for this model does not load \(.+\): it is skipped/);
    assert.match(await page.textContent("#kept-list li.broken"), /^cut \(saved, but does not load on this model: /);
    assert.ok(requests.every((u) => u.startsWith(base) && !/adapter/.test(u)), `no adapter fetched: ${requests}`);
    assert.deepEqual(await page.locator("#chat-right-adapter option").evaluateAll((o) => o.map((x) => x.value)),
      ["base", "trained", "kept:robot"]);
    const after = await ask(page, "robot");
    assert.deepEqual(after, before, "the same greedy answers after the reload");
    // A lost GPU (recovery.js) reloads the base: the adapters restored from the storage go back on it too.
    await page.workers()[0].evaluate(() => self.dispatchEvent(new MessageEvent("message", { data: { type: "destroy-gpu" } })));
    await page.waitForSelector("body[data-gpu-recovered='1'][data-phase=idle][data-kept-restored=true]", { timeout: 120_000 });
    assert.equal(await page.getAttribute("body", "data-kept"), '["robot"]');
    assert.deepEqual(await ask(page, "robot"), before, "the same greedy answers after the recovery");
    await page.screenshot({ path: path.join(out, "kept-restored.png"), fullPage: true });

    // Another base (the same weights at another URL) has none of the built-in model's; loading that one again, they are back.
    assert.deepEqual(await loadSource(page, "url", `${base}copy/`), []);
    assert.equal(await page.locator("#kept-list li").count(), 0);
    assert.equal(await page.isHidden("#chat-error"), true);
    assert.deepEqual(await loadSource(page, "default"), ["robot"]);

    // Remove deletes them from the storage: after a reload, nothing comes back.
    await page.click("button[aria-label='Remove kept adapter robot']");
    await page.waitForSelector(`body[data-kept='[]']`);
    await page.click("button[aria-label='Remove kept adapter cut']");
    await page.waitForFunction(() => document.querySelectorAll("#kept-list li").length === 0);
    await page.reload();
    assert.deepEqual(await restored(page), []);
    assert.equal(await page.locator("#kept-list li").count(), 0);
    assert.equal(await page.isHidden("#chat-error"), true);
    assert.deepEqual(problems, []);
    assert.deepEqual(external, []);
  } finally {
    await browser.close();
  }
});

// DevTools' quota override (Storage.overrideQuotaForOrigin, which cache.test.mjs uses) limits OPFS in this Chromium
// but not IndexedDB, so a full disk is played by the test: the worker's copy of kept-store.js comes with
// IndexedDB's put refusing with a QuotaExceededError any adapter whose name starts with "full". (A real one comes
// as the transaction's abort, not thrown by put; kept-store.js takes both the same way.) A failing storage is
// real: the page opens the database at a later version, which the worker's version-1 open then refuses.
const FULL = `const put = IDBObjectStore.prototype.put;
IDBObjectStore.prototype.put = function (value, key) {
  if (String(value?.name).startsWith("full")) throw new DOMException("The quota has been exceeded.", "QuotaExceededError");
  return put.call(this, value, key);
};
`;

test("a storage that refuses to save a kept adapter: the error says so, and the adapter stays kept for the visit", async () => {
  const browser = await launch();
  try {
    const { page, problems } = await open(browser, base);
    await page.route("**/kept-store.js", async (route) => {
      const real = await route.fetch();
      await route.fulfill({ response: real, body: FULL + (await real.text()) });
    });
    await page.reload();
    await restored(page);
    await train(page);

    await keep(page, "full-disk");
    await page.waitForSelector("#chat-error:not([hidden])");
    assert.match(await page.textContent("#chat-error"),
      /^not enough storage to save the kept adapter full-disk \([\d.]+ \w+\): this site may use only [\d.]+ \w+ more\. It stays kept until the page is closed/);
    assert.equal(await page.getAttribute("body", "data-kept"), '["full-disk"]');
    const answer = await ask(page, "full-disk");
    assert.notEqual(answer.right, answer.left, "the chat answers with it");

    await page.evaluate(() => new Promise((ok, ko) => {
      const open = indexedDB.open("webpeft-kept", 2);
      open.onerror = () => ko(open.error);
      open.onsuccess = () => { open.result.close(); ok(); };
    }));
    await keep(page, "no-db");
    await page.waitForSelector("#chat-error:not([hidden])");
    assert.match(await page.textContent("#chat-error"),
      /^could not save the kept adapter no-db in this browser's storage \(IndexedDB: VersionError: .*\)\. It stays kept until the page is closed/);
    assert.equal(await page.getAttribute("body", "data-kept"), '["full-disk","no-db"]');

    // Neither was saved, and the saved ones cannot be read: the load says so and goes on.
    await page.reload();
    assert.deepEqual(await restored(page), []);
    assert.match(await page.textContent("#chat-error"),
      /^could not read the kept adapters saved for this model in this browser's storage \(IndexedDB: VersionError: /);
    assert.equal(await page.isEnabled("#chat-send"), true, "the chat works");
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
  }
});
