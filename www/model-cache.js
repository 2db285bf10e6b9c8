// Models from a URL are downloaded once, into the Origin Private File System
// (OPFS), and loaded from there with Model.fromFiles: a second load makes no
// network request at all, so it works offline too. A cached model is the
// snapshot taken when it was first loaded; delete it to fetch the server's
// current files.
//
// Layout: webpeft-models/<sha-256 of the base URL>/ holds the model's files
// under their own names and manifest.json:
//   { url, name, complete, files: { "<file>": { size, etag, lastModified, complete } | { absent: true } } }
// A file's validator (ETag, else Last-Modified) and size are written before
// its first byte, so bytes already stored (a dropped connection, a closed
// tab) are resumed with `Range: bytes=<have>-` only while the server still
// serves the same file. A file counts as complete only once its full size is
// stored.
//
// Downloading (CachedModel) runs in the worker: it writes through
// createSyncAccessHandle, one response chunk at a time, never holding a whole
// file in memory. Listing and deleting (listCached, deleteCached) also run on
// the page.

const ROOT = "webpeft-models";
const MANIFEST = "manifest.json";
const INDEX = "model.safetensors.index.json";
const SINGLE = "model.safetensors";
// What the library reads besides config.json and the weights, when the folder has it.
const OPTIONAL = ["generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
  "chat_template.jinja", "tokenizer.model"];
const STALLED_TRIES = 4; // connection drops in a row with no new byte before giving up
const FLUSH_EVERY = 16 * 2 ** 20;
const PROGRESS_EVERY = 2 ** 20;

/** Bytes in the unit that reads best. */
export function size(bytes) {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return i === 0 ? `${bytes} bytes` : `${bytes.toFixed(1)} ${units[i]}`;
}
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** Not enough storage for a file: how much it needs (null: unknown), and how much this site may still use. */
export class CacheQuotaError extends Error {
  constructor(file, neededBytes, freeBytes) {
    super(`not enough storage to keep ${file}: ${neededBytes === null ? "" : `it needs ${size(neededBytes)} more, and `}` +
      `this site may use only ${size(freeBytes)} more; free disk space or delete cached models`);
    this.name = "CacheQuotaError";
    this.neededBytes = neededBytes;
    this.freeBytes = freeBytes;
  }
}

/** The connection dropped with `have` bytes of the file stored. */
class Dropped extends Error {
  constructor(have, cause) {
    super(String(cause?.message ?? cause));
    this.have = have;
  }
}

export const baseUrl = (url) => (url.endsWith("/") ? url : url + "/");

/** What exported adapters name as their base: the Hub repo (`org/name`) of a Hub URL, another URL itself
 * (as the library's fromUrl names it). */
export function modelName(url) {
  const hub = /^https:\/\/huggingface\.co\/([^/]+)\/([^/]+)\/resolve\//.exec(url);
  return hub ? `${hub[1]}/${hub[2]}` : url.replace(/\/+$/, "");
}

async function folderName(base) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(base));
  return [...new Uint8Array(digest)].slice(0, 16).map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function modelsDir() {
  return (await navigator.storage.getDirectory()).getDirectoryHandle(ROOT, { create: true });
}

/** The stored file `name` in `dir`, or null. */
async function storedFile(dir, name) {
  try {
    return await (await dir.getFileHandle(name)).getFile();
  } catch (e) {
    if (e.name === "NotFoundError") return null;
    throw e;
  }
}

async function readJson(dir, name) {
  const file = await storedFile(dir, name);
  return file ? JSON.parse(await file.text()) : null;
}

/** Opens `name` for writing; only one tab at a time may. */
async function openSync(dir, name) {
  const handle = await dir.getFileHandle(name, { create: true });
  try {
    return await handle.createSyncAccessHandle();
  } catch (e) {
    if (e.name === "NoModificationAllowedError") {
      throw new Error(`${name} is being written by another tab loading the same model: close it or wait for it`);
    }
    throw e;
  }
}

/** Writes `value` as JSON into `dir`/`name` (worker only). */
async function writeJson(dir, name, value) {
  const sync = await openSync(dir, name);
  try {
    const bytes = new TextEncoder().encode(JSON.stringify(value));
    sync.truncate(0);
    sync.write(bytes, { at: 0 });
    sync.flush();
  } finally {
    sync.close();
  }
}

function httpError(name, url, status) {
  const hint = status === 401 || status === 403 ? ": the repository is gated or private; accept its licence on its Hub page and paste an access token with read access" :
    status === 404 ? ": check the URL (the folder holding config.json)" : "";
  return new Error(`${name}: HTTP ${status} from ${url}${hint}`);
}

/** The total size a 206 response's Content-Range names, if it starts at `start`; otherwise null. */
function rangeTotal(response, start) {
  const m = /^bytes (\d+)-\d+\/(\d+)$/.exec(response.headers.get("Content-Range") ?? "");
  return m && Number(m[1]) === start ? Number(m[2]) : null;
}

async function quotaError(file, needed) {
  const { usage, quota } = await navigator.storage.estimate();
  return new CacheQuotaError(file, needed, Math.max(0, quota - usage));
}

const validator = (response) => ({ etag: response.headers.get("ETag"), lastModified: response.headers.get("Last-Modified") });
const sameFile = (known, v) => (known.etag || v.etag ? known.etag === v.etag : known.lastModified === v.lastModified);

/** Downloads into OPFS what is missing of one model, file by file. */
class Download {
  constructor(dir, manifest, base, token, onProgress) {
    Object.assign(this, { dir, manifest, base, onProgress });
    this.auth = token ? { Authorization: `Bearer ${token}` } : {};
    this.requests = 0;
  }

  save() { return writeJson(this.dir, MANIFEST, this.manifest); }

  /** Makes sure `name` is stored whole; false when an optional file is not on the server. */
  async file(name, optional) {
    if (name.includes("/") || name.startsWith(".")) throw new Error(`${name}: not a plain file name`);
    const known = this.manifest.files[name];
    if (known?.absent) return false;
    const stored = await storedFile(this.dir, name);
    // Bytes without a validator next to them cannot be trusted to be the server's: start over.
    let have = known ? stored?.size ?? 0 : 0;
    if (known?.size != null && have === known.size) {
      // Whole already (a tab closed between the last byte and the manifest's update counts too).
      if (!known.complete) { known.complete = true; await this.save(); }
      return true;
    }
    let stalls = 0;
    for (;;) {
      try {
        return await this.transfer(name, have, optional);
      } catch (e) {
        if (e.name === "QuotaExceededError") {
          const total = this.manifest.files[name]?.size;
          throw await quotaError(name, total == null ? null : total - have);
        }
        if (!(e instanceof Dropped)) throw e;
        stalls = e.have > have ? 0 : stalls + 1;
        have = e.have;
        if (stalls >= STALLED_TRIES) {
          const total = this.manifest.files[name]?.size;
          throw new Error(`the connection dropped while downloading ${name} (${e.message}); ${size(have)}` +
            `${total ? ` of ${size(total)}` : ""} is kept: load again to resume`);
        }
        await sleep(500 * stalls);
      }
    }
  }

  /** One request for `name` from byte `have` on, streamed into its file. */
  async transfer(name, have, optional) {
    const url = new URL(name, this.base).href;
    let response;
    try {
      this.requests++;
      response = await fetch(url, { headers: { ...this.auth, ...(have > 0 ? { Range: `bytes=${have}-` } : {}) }, cache: "no-store" });
    } catch (e) {
      // Nothing of this model has answered yet: a wrong URL, most likely, not a flaky connection.
      if (Object.keys(this.manifest.files).length === 0) {
        throw new Error(`could not reach ${this.base} for ${name} (${e.message}): check the URL and your connection`);
      }
      throw new Dropped(have, e);
    }
    const known = this.manifest.files[name];
    if (response.status === 404 && optional && have === 0) {
      this.manifest.files[name] = { absent: true };
      await this.save();
      return false;
    }
    if (response.status === 416) return this.restart(name, have, response);
    if (!response.ok) throw httpError(name, url, response.status);
    const v = validator(response);
    let start = 0;
    if (response.status === 206) {
      // Go on only with the same file (validator and size) from exactly where the stored bytes end.
      if (!known || rangeTotal(response, have) !== known.size || !sameFile(known, v)) return this.restart(name, have, response);
      start = have;
    } else {
      // A whole file: the first request, or a server that ignores Range (then the stored bytes are replaced).
      const length = response.headers.get("Content-Length");
      this.manifest.files[name] = { size: length === null ? null : Number(length), ...v, complete: false };
      await this.save();
    }
    const entry = this.manifest.files[name];
    if (entry.size !== null) {
      const { usage, quota } = await navigator.storage.estimate();
      if (quota - usage < entry.size - start) throw await quotaError(name, entry.size - start);
    }
    const at = await this.write(name, response, start, entry.size);
    if (entry.size !== null && at < entry.size) throw new Dropped(at, "the server closed the connection early");
    // More than announced: a compressed response (Content-Length counts the encoded bytes); the body ended whole.
    Object.assign(entry, { size: at, complete: true });
    await this.save();
    return true;
  }

  /** The stored bytes are not the server's file any more (or the range was refused): start again from 0. */
  async restart(name, have, response) {
    await response.body?.cancel();
    if (have === 0) throw new Error(`${name}: HTTP ${response.status} to a request without Range, from ${response.url}`);
    delete this.manifest.files[name];
    await this.save();
    return this.transfer(name, 0, false);
  }

  /** Streams `response`'s body into `name` from byte `start`; returns the size stored. */
  async write(name, response, start, total) {
    const sync = await openSync(this.dir, name);
    let at = start;
    try {
      sync.truncate(start);
      const reader = response.body.getReader();
      let unflushed = 0;
      let reported = start;
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (e) {
          throw new Dropped(at, e);
        }
        if (chunk.done) break;
        try {
          sync.write(chunk.value, { at });
        } catch (e) {
          if (e.name !== "QuotaExceededError") throw e;
          throw await quotaError(name, (total ?? at + chunk.value.byteLength) - at);
        }
        at += chunk.value.byteLength;
        unflushed += chunk.value.byteLength;
        if (unflushed >= FLUSH_EVERY) { sync.flush(); unflushed = 0; }
        if (at - reported >= PROGRESS_EVERY || at === total) {
          this.onProgress?.({ tensor: `downloading ${name}`, loadedBytes: at, totalBytes: total ?? at });
          reported = at;
        }
      }
    } finally {
      sync.flush();
      sync.close();
    }
    return at;
  }
}

/**
 * The model at `source.url`, stored in OPFS: config() and files() download what is not stored yet, so a
 * caller can check config.json before any weight is downloaded. `source.token`, when given, is sent as
 * `Authorization: Bearer`. Download progress goes to `onProgress` in the library's load-progress form
 * ({tensor, loadedBytes, totalBytes}).
 */
export class CachedModel {
  static async open(source, onProgress) {
    const base = baseUrl(source.url);
    const models = await modelsDir();
    const folder = await folderName(base);
    const dir = await models.getDirectoryHandle(folder, { create: true });
    const manifest = (await readJson(dir, MANIFEST)) ?? { url: base, name: modelName(base), complete: false, files: {} };
    return new CachedModel(models, folder, new Download(dir, manifest, base, source.token, onProgress));
  }

  constructor(models, folder, download) {
    Object.assign(this, { models, folder, download, dir: download.dir, manifest: download.manifest, name: download.manifest.name });
  }

  /** Requests made so far (0 when everything was stored). */
  get requests() { return this.download.requests; }

  /** config.json's text. */
  async config() {
    await this.stored(() => this.download.file("config.json", false));
    return (await storedFile(this.dir, "config.json")).text();
  }

  /** Every file of the model, as `File`s for Model.fromFiles. */
  async files() {
    await this.stored(async () => {
      const weights = (await this.download.file(INDEX, true))
        ? [...new Set(Object.values(JSON.parse(await (await storedFile(this.dir, INDEX)).text()).weight_map ?? {}))]
        : [SINGLE];
      for (const name of weights) await this.download.file(name, false);
      for (const name of OPTIONAL) await this.download.file(name, true);
    });
    if (!this.manifest.complete) {
      this.manifest.complete = true;
      await this.download.save();
    }
    const names = Object.entries(this.manifest.files).filter(([, f]) => f.complete).map(([n]) => n);
    return Promise.all(names.map((n) => storedFile(this.dir, n)));
  }

  /** Runs `step`; if it fails on a model that never answered, nothing is left behind in the list. */
  async stored(step) {
    try {
      await step();
    } catch (e) {
      if (Object.keys(this.manifest.files).length === 0) await this.models.removeEntry(this.folder, { recursive: true }).catch(() => {});
      throw e;
    }
  }
}

/** The cached models: [{folder, url, name, bytes (stored, partial files included), complete}]. */
export async function listCached() {
  const models = await modelsDir();
  const out = [];
  for await (const [folder, dir] of models.entries()) {
    if (dir.kind !== "directory") continue;
    const manifest = await readJson(dir, MANIFEST).catch(() => null);
    let bytes = 0;
    for await (const [name, f] of dir.entries()) {
      if (f.kind === "file" && name !== MANIFEST) bytes += (await f.getFile()).size;
    }
    out.push({ folder, url: manifest?.url ?? folder, name: manifest?.name ?? folder, bytes, complete: !!manifest?.complete });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

/** Removes a cached model's folder (its files and manifest). */
export async function deleteCached(folder) {
  await (await modelsDir()).removeEntry(folder, { recursive: true });
}
