// The chat's kept adapters, saved in this browser's IndexedDB (on this machine) so that a reload, or
// loading their base model again, brings them back. Used by the worker (chat-worker.js).
//
// Database "webpeft-kept", store "adapters": one record per kept adapter, under the key [base, name]:
//   { base, name, savedAt, files: { "adapter_config.json": Uint8Array, "adapter_model.safetensors": Uint8Array } }
// `files` are the adapter's files as Model.exportAdapter writes them (PEFT's), given back to importAdapter as they
// are. `base` names the base model the adapter was trained on (worker.js's baseKey): "default" for the page's
// built-in model, "url:<base URL>" for a model from a URL (the URL model-cache.js keeps it under), and
// "files:<folder>/<weight bytes>" for a picked folder.
import { size } from "./model-cache.js";

const DB = { name: "webpeft-kept", store: "adapters", version: 1 };

/** Not enough storage to save the kept adapter `name` (`bytes` long); this site may use `freeBytes` more. */
export class KeptQuotaError extends Error {
  constructor(name, bytes, freeBytes) {
    super(`not enough storage to save the kept adapter ${name} (${size(bytes)}): this site may use only ${size(freeBytes)} ` +
      "more. It stays kept until the page is closed or another model is loaded: download it, or delete cached models " +
      "to make room, then remove it and keep the adapter again");
    this.name = "KeptQuotaError";
    this.adapter = name;
    this.bytes = bytes;
    this.freeBytes = freeBytes;
  }
}

/** IndexedDB failed at `what` ("save the kept adapter robot", …); `after` says what that leaves. */
export class KeptStorageError extends Error {
  constructor(what, cause, after) {
    super(`could not ${what} in this browser's storage (IndexedDB: ${cause?.name ?? "Error"}: ${cause?.message ?? cause})` +
      (after ? `. ${after}` : ""));
    this.name = "KeptStorageError";
    this.cause = cause;
  }
}

/** A saved adapter that no longer imports on its base (corrupt, or the base's shape changed): skipped, still saved. */
export class KeptImportError extends Error {
  constructor(name, cause) {
    super(`the kept adapter ${name} saved for this model does not load (${cause?.message ?? cause}): it is skipped, ` +
      "and stays saved until you remove it");
    this.name = "KeptImportError";
    this.adapter = name;
    this.cause = cause;
  }
}

/** Runs `fn(store)` in one transaction; resolves to its request's result once the transaction commits. */
function transaction(mode, fn) {
  return new Promise((ok, ko) => {
    const open = indexedDB.open(DB.name, DB.version);
    open.onupgradeneeded = () => open.result.createObjectStore(DB.store);
    open.onerror = () => ko(open.error);
    open.onsuccess = () => {
      const db = open.result;
      try {
        const tx = db.transaction(DB.store, mode);
        const req = fn(tx.objectStore(DB.store));
        tx.oncomplete = () => { db.close(); ok(req.result); };
        // A failed request aborts the transaction (a full disk too: QuotaExceededError); tx.error says why.
        tx.onabort = () => { db.close(); ko(tx.error ?? req.error); };
      } catch (e) {
        db.close();
        ko(e);
      }
    };
  });
}

/** The records of `base`, in the order they were kept. */
export async function listKept(base) {
  // Array keys sort after strings: [base, []] is above every [base, name].
  const all = await transaction("readonly", (s) => s.getAll(IDBKeyRange.bound([base], [base, []])))
    .catch((e) => { throw new KeptStorageError("read the kept adapters saved for this model", e); });
  return all.sort((a, b) => a.savedAt - b.savedAt);
}

/** Saves the adapter `name` of `base`: its files, each copied out of whatever buffer it is a view of. */
export async function saveKept(base, name, files) {
  const own = Object.fromEntries(Object.entries(files).map(([file, bytes]) => [file, bytes.slice()]));
  const bytes = Object.values(own).reduce((n, b) => n + b.byteLength, 0);
  try {
    await transaction("readwrite", (s) => s.put({ base, name, savedAt: Date.now(), files: own }, [base, name]));
  } catch (e) {
    if (e?.name === "QuotaExceededError") {
      const { usage, quota } = await navigator.storage.estimate();
      throw new KeptQuotaError(name, bytes, Math.max(0, quota - usage));
    }
    throw new KeptStorageError(`save the kept adapter ${name}`, e,
      "It stays kept until the page is closed or another model is loaded: download it to keep its files");
  }
}

/** Deletes the adapter `name` of `base` (nothing when it was never saved). */
export async function deleteKept(base, name) {
  await transaction("readwrite", (s) => s.delete([base, name]))
    .catch((e) => { throw new KeptStorageError(`delete the kept adapter ${name}`, e, "It comes back when this model is loaded again"); });
}
