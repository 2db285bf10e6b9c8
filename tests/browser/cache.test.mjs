// The demo page downloads a URL model once, into the browser's Origin Private
// File System (www/model-cache.js), and loads it from there. A stand-in for the
// Hugging Face Hub on another port (another origin, as the real Hub is) serves
// model folders under <org>/<name>/resolve/main/ with ETags and Range support,
// counts every request and byte, and can drop or stall the connection
// part-way through a file, stop honouring Range, change a file's ETag, ask for
// a token or answer an HTTP error.
//
//   node --test --test-timeout=900000 tests/browser/cache.test.mjs
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { test } from "node:test";
import assert from "node:assert/strict";
import { serve } from "../../www/serve.mjs";
import { root, outDir, launch, open } from "./common.mjs";

const out = outDir("cache");
const MODELS = { "org/toy": path.join(root, "www", "default-model"), "org/gqa": path.join(root, "tests", "fixtures", "llama_gqa") };
// org/toy-<anything> is the toy model again, under a URL of its own (a fresh cache entry).
const folderOf = (model) => MODELS[model] ?? (model?.startsWith("org/toy-") ? MODELS["org/toy"] : undefined);

/**
 * The stand-in Hub. `log` holds {model, file, range, auth} per GET; `served["model/file"]` the body bytes sent.
 * Set `drops` ({key, after, stall, then}: cut, or with `stall` hold, the next response for key after `after`
 * bytes, then call `then`), `ignoreRange`, `etagSalt` (changes every ETag), `tokens[model]` (the bearer token
 * it needs) and `fail["model/file"]` (an HTTP status).
 */
function hub() {
  const h = { log: [], served: {}, drops: [], ignoreRange: false, etagSalt: "", tokens: {}, fail: {}, stalled: [] };
  h.server = http.createServer((req, res) => {
    const cors = { "Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "ETag, Content-Range, Content-Length, Accept-Ranges" };
    if (req.method === "OPTIONS") {
      res.writeHead(204, { ...cors, "Access-Control-Allow-Headers": "Range, Authorization" });
      return res.end();
    }
    const m = /^\/([^/]+\/[^/]+)\/resolve\/main\/([^/]+)$/.exec(new URL(req.url, "http://hub").pathname);
    const file = m && folderOf(m[1]) && path.join(folderOf(m[1]), m[2]);
    h.log.push({ model: m?.[1], file: m?.[2], range: req.headers.range ?? null, auth: req.headers.authorization ?? null });
    const key = `${m?.[1]}/${m?.[2]}`;
    const token = h.tokens[m?.[1]];
    const status = token && req.headers.authorization !== `Bearer ${token}` ? 401 : h.fail[key];
    if (status) {
      res.writeHead(status, { ...cors, "Content-Type": "text/plain" });
      return res.end(http.STATUS_CODES[status]);
    }
    if (!file || !fs.existsSync(file)) {
      res.writeHead(404, { ...cors, "Content-Type": "text/plain" });
      return res.end("Entry not found");
    }
    const bytes = fs.readFileSync(file);
    const etag = `"${crypto.createHash("sha256").update(bytes).update(h.etagSalt).digest("hex").slice(0, 16)}"`;
    const headers = { ...cors, "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", ETag: etag };
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    let body = bytes;
    if (range && !h.ignoreRange) {
      const start = Number(range[1]);
      if (start >= bytes.length) {
        res.writeHead(416, { ...cors, "Content-Range": `bytes */${bytes.length}` });
        return res.end();
      }
      body = bytes.subarray(start);
      res.writeHead(206, { ...headers, "Content-Range": `bytes ${start}-${bytes.length - 1}/${bytes.length}`, "Content-Length": body.length });
    } else {
      res.writeHead(200, { ...headers, "Content-Length": bytes.length });
    }
    const drop = h.drops.findIndex((d) => d.key === key);
    if (drop >= 0) {
      // A dropped connection: part of the body, then the socket goes away (or, stalled, stays open and silent).
      const { after, stall, then } = h.drops.splice(drop, 1)[0];
      h.served[key] = (h.served[key] ?? 0) + after;
      res.write(body.subarray(0, after), () => {
        if (stall) h.stalled.push(res);
        else setTimeout(() => { res.socket.destroy(); then?.(); }, 100);
      });
      return;
    }
    h.served[key] = (h.served[key] ?? 0) + body.length;
    res.end(body);
  });
  return new Promise((ok) => h.server.listen(0, "127.0.0.1", () => {
    h.base = `http://127.0.0.1:${h.server.address().port}/`;
    ok(h);
  }));
}

const page = await serve(0);
const base = `http://127.0.0.1:${page.address().port}/`;
const theHub = await hub();
const measured = {};
test.after(() => {
  page.close();
  for (const res of theHub.stalled) res.socket.destroy();
  theHub.server.close();
  fs.writeFileSync(path.join(out, "measured.json"), JSON.stringify(measured, null, 2));
  console.log("measured:", JSON.stringify(measured));
});

const fileSize = (model, name) => fs.statSync(path.join(MODELS[model], name)).size;
const folderBytes = (model) => fs.readdirSync(MODELS[model]).filter((f) => f !== "README.md")
  .reduce((sum, f) => sum + fileSize(model, f), 0);
const weightRequests = (model) => theHub.log.filter((r) => r.model === model && /\.safetensors$/.test(r.file));

/** Loads `url` through the page's URL source and waits for the outcome: "loaded" or the model error's text. */
async function loadUrl(p, url) {
  await p.check("input[name=source][value=url]");
  await p.fill("#model-url", url);
  await p.click("#load");
  await p.waitForSelector("body[data-phase=idle]", { timeout: 300_000 });
  if (await p.isVisible("#model-error")) return p.textContent("#model-error");
  assert.match(await p.textContent("#load-status"), /^loaded: /);
  return "loaded";
}

/** The greedy continuation of the prompt with the loaded base model. */
async function generate(p) {
  await p.click("#generate");
  await p.waitForSelector("body[data-before=done]", { timeout: 300_000 });
  const text = await p.textContent("#before");
  await p.evaluate(() => { delete document.body.dataset.before; });
  await p.waitForSelector("body[data-phase=idle]");
  return text;
}

/** The folders under the page origin's OPFS model cache. */
const opfsFolders = (p) => p.evaluate(async () => {
  const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle("webpeft-models", { create: true });
  const names = [];
  for await (const name of dir.keys()) names.push(name);
  return names;
});

test("a URL model is downloaded once into OPFS: a dropped connection resumes by Range, a reload loads with no request, delete downloads again", async () => {
  const browser = await launch();
  try {
    const { page: p, problems } = await open(browser, base);
    await p.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
    await p.fill("#prompt", "The little robot");
    const reference = await generate(p); // the built-in toy model, read from the page's own files
    assert.ok(reference.length > 0);
    assert.equal(await p.isVisible("#cache-empty"), true, "no cached model yet");

    // A URL that does not answer: the error names config.json, and the list gains no empty entry.
    assert.match(await loadUrl(p, "http://127.0.0.1:9/no-model/"), /^could not reach http:\/\/127\.0\.0\.1:9\/no-model\/ for config\.json/);
    assert.equal(await p.textContent("#load-status"), "not loaded");
    assert.deepEqual(await opfsFolders(p), []);

    // (a) The connection drops 600 000 bytes into model.safetensors: the worker goes on from the bytes it stored.
    const toy = `${theHub.base}org/toy/resolve/main/`;
    const weights = fileSize("org/toy", "model.safetensors");
    const DROP_AT = 600_000;
    theHub.drops.push({ key: "org/toy/model.safetensors", after: DROP_AT });
    const started = Date.now();
    assert.equal(await loadUrl(p, toy), "loaded");
    measured.firstLoadSeconds = (Date.now() - started) / 1000;
    const first = weightRequests("org/toy");
    assert.equal(first.length, 2, `model.safetensors: one request, then one resume: ${JSON.stringify(first)}`);
    assert.equal(first[0].range, null);
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(first[1].range ?? "")?.[1]);
    assert.ok(resumedAt > 0 && resumedAt <= DROP_AT, `resumed from the stored bytes: ${first[1].range}`);
    const served = theHub.served["org/toy/model.safetensors"];
    Object.assign(measured, { weightBytes: weights, droppedAfter: DROP_AT, resumedAt, servedBytes: served });
    assert.ok(served - weights === DROP_AT - resumedAt && served < weights * 1.05, `served ${served} bytes for a ${weights}-byte file`);

    // (b) The cached model is the same model: the same greedy text as the built-in copy of these files.
    assert.equal(await generate(p), reference);

    // The list names it with its size (every file of the folder), and the storage line is there.
    assert.equal(await p.getAttribute("body", "data-cached-models"), "1");
    const row = await p.textContent("#cached-models li");
    assert.match(row, /127\.0\.0\.1:\d+\/org\/toy\/resolve\/main/);
    assert.ok(row.includes(`${(folderBytes("org/toy") / 2 ** 20).toFixed(1)} MiB`), `size in the list: ${row}`);
    assert.match(await p.textContent("#storage-estimate"), /stores [\d.]+ \w+ of the [\d.]+ \w+ this browser allows/);
    measured.persistence = await p.textContent("#storage-persist");
    assert.match(measured.persistence, /^Persistent storage: (granted|not granted)/);
    await p.locator("#model-section").screenshot({ path: path.join(out, "cached-models.png") });

    // (c) After a reload, the same URL loads with no request to the Hub at all.
    await p.reload();
    await p.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
    await p.waitForSelector("body[data-cached-models='1']");
    const before = theHub.log.length;
    const again = Date.now();
    assert.equal(await loadUrl(p, toy), "loaded");
    measured.cachedLoadSeconds = (Date.now() - again) / 1000;
    measured.requestsOnSecondLoad = theHub.log.length - before;
    assert.deepEqual(theHub.log.slice(before), [], "no request on the second load");

    // (d) Delete, by keyboard: the folder leaves OPFS and the list; the next load downloads again.
    assert.equal((await opfsFolders(p)).length, 1);
    await p.focus("#cached-models button");
    assert.equal(await p.getAttribute("#cached-models button", "aria-label"), "Delete the cached model http://127.0.0.1:" +
      `${new URL(theHub.base).port}/org/toy/resolve/main`);
    await p.keyboard.press("Enter");
    await p.waitForSelector("body[data-cached-models='0']");
    assert.equal(await p.isVisible("#cache-empty"), true);
    assert.deepEqual(await opfsFolders(p), []);
    const afterDelete = theHub.log.length;
    assert.equal(await loadUrl(p, toy), "loaded");
    const downloaded = theHub.log.slice(afterDelete).filter((r) => r.file === "model.safetensors");
    assert.deepEqual(downloaded.map((r) => r.range), [null], "downloaded whole again");
    assert.deepEqual(problems.filter((x) => !/ERR_CONNECTION_REFUSED|Failed to fetch/.test(x)), []);
  } finally {
    await browser.close();
  }
});

// The cache module alone, in a plain page's module worker (no model loaded): the ways a download goes wrong.
const scratch = path.join(out, "scratch");
fs.mkdirSync(scratch, { recursive: true });
fs.writeFileSync(path.join(scratch, "index.html"), `<!doctype html><link rel="icon" href="data:,"><script type="module" src="main.js"></script>`);
fs.writeFileSync(path.join(scratch, "main.js"), `
  import { listCached } from "/www/model-cache.js";
  const worker = new Worker("probe.js", { type: "module" });
  const waiting = new Map();
  worker.onmessage = (e) => { waiting.get(e.data.id)(e.data); waiting.delete(e.data.id); };
  let next = 0;
  window.cacheLoad = (url, token) => new Promise((ok) => { waiting.set(next, ok); worker.postMessage({ id: next++, url, token }); });
  window.listCached = listCached;
  document.body.dataset.ready = "yes";`);
fs.writeFileSync(path.join(scratch, "probe.js"), `
  import { CachedModel } from "/www/model-cache.js";
  const hex = (b) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");
  self.onmessage = async ({ data: { id, url, token } }) => {
    try {
      const cached = await CachedModel.open({ url, token }, null);
      await cached.config();
      const files = {};
      for (const f of await cached.files()) files[f.name] = hex(await crypto.subtle.digest("SHA-256", await f.arrayBuffer()));
      self.postMessage({ id, files, requests: cached.requests });
    } catch (e) {
      self.postMessage({ id, error: e.message, name: e.name });
    }
  };`);

/** name → sha-256 of every file a model folder serves. */
const shas = (model) => Object.fromEntries(fs.readdirSync(folderOf(model)).filter((f) => f !== "README.md")
  .map((f) => [f, crypto.createHash("sha256").update(fs.readFileSync(path.join(folderOf(model), f))).digest("hex")]));
const ranges = (model, file) => theHub.log.filter((r) => r.model === model && r.file === file).map((r) => r.range);

test("the cache resumes a closed tab's download, restarts cleanly on a server that ignores Range or a changed ETag, sends a token, and says what failed", async () => {
  const probeServer = await serve(0, [["/www/", path.join(root, "www")], ["/", scratch]]);
  const probeUrl = `http://127.0.0.1:${probeServer.address().port}/`;
  const browser = await launch();
  const context = await browser.newContext();
  try {
    let { page: p, problems } = await open(context, probeUrl);
    await p.waitForSelector("body[data-ready]", { state: "attached" });
    const load = (model, token) => p.evaluate(([url, t]) => window.cacheLoad(url, t), [`${theHub.base}${model}/resolve/main/`, token]);

    // A sharded model: the index, both shards and the tokenizer files, byte for byte; the second time, no request.
    const gqa = await load("org/gqa");
    assert.deepEqual(gqa.files, shas("org/gqa"), gqa.error);
    assert.deepEqual(ranges("org/gqa", "model-00001-of-00002.safetensors"), [null]);
    assert.equal((await load("org/gqa")).requests, 0);

    // A tab closed mid-download: the partial file stays, and the next page resumes it.
    const toyBytes = shas("org/toy");
    theHub.drops.push({ key: "org/toy-closed/model.safetensors", after: 700_000, stall: true });
    p.evaluate((url) => { window.cacheLoad(url); }, `${theHub.base}org/toy-closed/resolve/main/`);
    const stored = () => p.evaluate(async () => (await window.listCached()).find((m) => m.url.includes("toy-closed"))?.bytes ?? 0);
    const want = fileSize("org/toy", "config.json") + 700_000; // config.json comes before the weights
    for (let t = 0, have = 0; (have = await stored()) < want; t++) {
      assert.ok(t < 200, `the first 700 000 bytes reach OPFS: ${have} bytes stored`);
      await new Promise((ok) => setTimeout(ok, 50));
    }
    await p.close();
    ({ page: p, problems } = await open(context, probeUrl));
    await p.waitForSelector("body[data-ready]", { state: "attached" });
    const closed = await load("org/toy-closed");
    assert.deepEqual(closed.files, toyBytes, closed.error);
    assert.deepEqual(ranges("org/toy-closed", "model.safetensors"), [null, "bytes=700000-"]);

    // A server that ignores Range (200 to the resume): the file starts over from that very response.
    theHub.drops.push({ key: "org/toy-norange/model.safetensors", after: 500_000, then: () => { theHub.ignoreRange = true; } });
    const norange = await load("org/toy-norange");
    theHub.ignoreRange = false;
    assert.deepEqual(norange.files, toyBytes, norange.error);
    assert.deepEqual(ranges("org/toy-norange", "model.safetensors"), [null, "bytes=500000-"]);

    // The file changed on the server (another ETag): the stored bytes are dropped and the file fetched whole.
    theHub.drops.push({ key: "org/toy-changed/model.safetensors", after: 500_000, then: () => { theHub.etagSalt = "v2"; } });
    const changed = await load("org/toy-changed");
    theHub.etagSalt = "";
    assert.deepEqual(changed.files, toyBytes, changed.error);
    assert.deepEqual(ranges("org/toy-changed", "model.safetensors"), [null, "bytes=500000-", null]);

    // A gated model: without the token, a readable 401; with it, every request carries it and nothing else does.
    theHub.tokens["org/toy-gated"] = "secret";
    const refused = await load("org/toy-gated");
    assert.match(refused.error ?? "", /^config\.json: HTTP 401 from http:\/\/127\.0\.0\.1:\d+\/org\/toy-gated\/resolve\/main\/config\.json: .*access token/);
    const before = theHub.log.length;
    const gated = await load("org/toy-gated", "secret");
    assert.deepEqual(gated.files, toyBytes, gated.error);
    assert.deepEqual([...new Set(theHub.log.slice(before).map((r) => r.auth))], ["Bearer secret"]);
    assert.ok(theHub.log.filter((r) => r.model !== "org/toy-gated").every((r) => r.auth === null));

    // An HTTP error names the file and the status.
    theHub.fail["org/toy-broken/tokenizer.json"] = 500;
    const broken = await load("org/toy-broken");
    assert.match(broken.error ?? "", /^tokenizer\.json: HTTP 500 from http:\/\/127\.0\.0\.1:\d+\/org\/toy-broken\/resolve\/main\/tokenizer\.json$/);

    // Over the quota: a typed error saying how much the file needs and how much is free.
    const cdp = await context.newCDPSession(p);
    const { usage } = await p.evaluate(() => navigator.storage.estimate());
    await cdp.send("Storage.overrideQuotaForOrigin", { origin: new URL(probeUrl).origin, quotaSize: usage + 500_000 });
    const full = await load("org/toy-full");
    await cdp.send("Storage.overrideQuotaForOrigin", { origin: new URL(probeUrl).origin });
    assert.equal(full.name, "CacheQuotaError", full.error);
    // (Which file hits the quota, and the figures, depend on when Chromium updates its usage count.)
    assert.match(full.error, /^not enough storage to keep [\w.]+: (it needs [\d.]+ \w+ more, and )?this site may use only [\d.]+ \w+ more/);
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    probeServer.close();
  }
});
