// The demo page downloads a URL model once, into the browser's Origin Private
// File System (www/model-cache.js), and loads it from there. A stand-in for the
// Hugging Face Hub on another port (another origin, as the real Hub is) serves
// model folders under <org>/<name>/resolve/main/ with ETags and Range support,
// counts every request and byte, and can drop the connection part-way through
// a file or stop honouring Range.
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

/** The stand-in Hub. `log` holds {model, file, range} per GET; `served[model/file]` the body bytes sent. */
function hub() {
  const h = { log: [], served: {}, drops: [], ignoreRange: false, etagSalt: "" };
  h.server = http.createServer((req, res) => {
    const cors = { "Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "ETag, Content-Range, Content-Length, Accept-Ranges" };
    if (req.method === "OPTIONS") {
      res.writeHead(204, { ...cors, "Access-Control-Allow-Headers": "Range, Authorization" });
      return res.end();
    }
    const m = /^\/([^/]+\/[^/]+)\/resolve\/main\/([^/]+)$/.exec(new URL(req.url, "http://hub").pathname);
    const file = m && MODELS[m[1]] && path.join(MODELS[m[1]], m[2]);
    h.log.push({ model: m?.[1], file: m?.[2], range: req.headers.range ?? null, auth: req.headers.authorization ?? null });
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
    const key = `${m[1]}/${m[2]}`;
    const drop = h.drops.findIndex((d) => d.key === key);
    if (drop >= 0) {
      // A dropped connection: part of the body, then the socket goes away.
      const { after } = h.drops.splice(drop, 1)[0];
      h.served[key] = (h.served[key] ?? 0) + after;
      res.write(body.subarray(0, after), () => setTimeout(() => res.socket.destroy(), 100));
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
    assert.match(await p.textContent("#storage-persist"), /^Persistent storage: (granted|not granted)/);

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
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
  }
});
