// What the real-browser test files share: Debian's Chromium with WebGPU on
// SwiftShader (playwright-core), a page that records console errors and
// requests that leave localhost, the demo's static server, and readers for
// the files the page writes (stored zip, safetensors, GGUF header).
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

export const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.join(here, "..", "..");

/** tests/browser/out/<name>, emptied: where one test file leaves its outputs. */
export function outDir(name) {
  const dir = path.join(here, "out", name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

export const WEBGPU_ARGS = ["--enable-unsafe-webgpu", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run", "--disable-quic"];
export const launch = (webgpu = true) => chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: webgpu ? WEBGPU_ARGS : WEBGPU_ARGS.filter((a) => a !== "--enable-unsafe-webgpu"),
});

/**
 * A page that fails the test on any console error or page error, and logs requests that leave localhost;
 * `initScript` (a function) runs in the page before its own scripts (not in its workers).
 */
export async function open(browser, url, { initScript } = {}) {
  const page = await browser.newPage({ acceptDownloads: true });
  if (initScript) await page.addInitScript(initScript);
  const problems = [];
  const external = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("request", (r) => { if (!r.url().startsWith("http://127.0.0.1")) external.push(r.url()); });
  await page.goto(url);
  return { page, problems, external };
}

/** The stored entries of a zip archive (what the page writes: no compression). */
export function unzip(buf) {
  const files = {};
  let i = 0;
  while (buf.readUInt32LE(i) === 0x04034b50) {
    const method = buf.readUInt16LE(i + 8);
    const size = buf.readUInt32LE(i + 18);
    const nameLen = buf.readUInt16LE(i + 26);
    const extraLen = buf.readUInt16LE(i + 28);
    const name = buf.subarray(i + 30, i + 30 + nameLen).toString("utf8");
    const start = i + 30 + nameLen + extraLen;
    assert.equal(method, 0, `${name}: stored entries expected`);
    files[name] = buf.subarray(start, start + size);
    i = start + size;
  }
  return files;
}

/** name → {dtype, shape, data: Float32Array} of a safetensors file. */
export function safetensors(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const out = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [a, b] = info.data_offsets;
    const bytes = buf.subarray(8 + n + a, 8 + n + b);
    out[name] = { ...info, data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)) };
  }
  return out;
}

/** A GGUF file's header: version, metadata (key → value, in order) and tensor infos. */
export function gguf(buf) {
  assert.equal(buf.subarray(0, 4).toString("latin1"), "GGUF", "GGUF magic");
  let i = 4;
  const take = (n, read) => { const v = read(i); i += n; return v; };
  const u32 = () => take(4, (o) => buf.readUInt32LE(o));
  const u64 = () => take(8, (o) => Number(buf.readBigUInt64LE(o)));
  const str = () => { const n = u64(); return take(n, (o) => buf.subarray(o, o + n).toString("utf8")); };
  const scalar = [(o) => buf.readUInt8(o), (o) => buf.readInt8(o), (o) => buf.readUInt16LE(o), (o) => buf.readInt16LE(o),
    (o) => buf.readUInt32LE(o), (o) => buf.readInt32LE(o), (o) => buf.readFloatLE(o), (o) => buf.readUInt8(o) !== 0];
  const width = [1, 1, 2, 2, 4, 4, 4, 1];
  const value = (t) => {
    if (t < 8) return take(width[t], scalar[t]);
    if (t === 8) return str();
    if (t === 9) { const et = u32(); return Array.from({ length: u64() }, () => value(et)); }
    if (t === 10 || t === 11) return take(8, (o) => Number(t === 10 ? buf.readBigUInt64LE(o) : buf.readBigInt64LE(o)));
    if (t === 12) return take(8, (o) => buf.readDoubleLE(o));
    throw new Error(`GGUF value type ${t} at byte ${i}`);
  };
  const version = u32();
  const tensorCount = u64();
  const kvCount = u64();
  const kv = new Map();
  for (let k = 0; k < kvCount; k++) { const key = str(); kv.set(key, value(u32())); }
  const tensors = Array.from({ length: tensorCount }, () => {
    const name = str();
    const ne = Array.from({ length: u32() }, () => u64());
    return { name, ne, type: u32(), offset: u64() };
  });
  return { version, tensorCount, kv, tensors };
}
