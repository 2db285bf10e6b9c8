// The page's "cached models" panel: the models model-cache.js keeps in this
// browser's storage, each with its size and a Delete button; how much of its
// quota the site uses (navigator.storage.estimate); and whether the browser
// keeps that storage until the user deletes it (navigator.storage.persist,
// asked once a download has put a model there).
import { listCached, deleteCached, size } from "./model-cache.js";

const $ = (id) => document.getElementById(id);

/** The panel; `showError(context, message)` shows what fails. */
export function cachePanel({ showError }) {
  let idle = false;

  function item(m) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "cached-name";
    name.textContent = m.name;
    name.title = m.url;
    const bytes = document.createElement("span");
    bytes.className = "cached-size";
    bytes.textContent = `${size(m.bytes)}${m.complete ? "" : " (partial: the next load resumes it)"}`;
    const remove = document.createElement("button");
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete the cached model ${m.name}`);
    remove.disabled = !idle;
    remove.onclick = () => deleteCached(m.folder).then(refresh)
      .catch((e) => showError("cache", `could not delete ${m.name}: ${e.message}`));
    li.append(name, " ", bytes, " ", remove);
    return li;
  }

  async function refresh() {
    const models = await listCached();
    $("cached-models").replaceChildren(...models.map(item));
    $("cache-empty").hidden = models.length > 0;
    document.body.dataset.cachedModels = models.length;
    const { usage, quota } = await navigator.storage.estimate();
    $("storage-estimate").textContent = `This site stores ${size(usage)} of the ${size(quota)} this browser allows it.`;
    if (await navigator.storage.persisted()) showPersisted(true);
  }

  function showPersisted(granted) {
    $("storage-persist").textContent = granted ? "Persistent storage: granted (cached models stay until you delete them)." :
      "Persistent storage: not granted (the browser may delete cached models when the disk runs low).";
    document.body.dataset.persisted = granted;
  }

  const listed = (p) => p.catch((e) => showError("cache", `could not read the cached models: ${e.message}`));
  return {
    refresh: () => listed(refresh()),
    /** A load went through the cache; `downloaded` when it fetched something. */
    cached: (downloaded) => listed(refresh().then(async () => {
      if (downloaded && !(await navigator.storage.persisted())) showPersisted(await navigator.storage.persist());
    })),
    /** Deleting waits while the worker may be writing or reading the files. */
    controls(isIdle) {
      idle = isIdle;
      for (const b of $("cached-models").querySelectorAll("button")) b.disabled = !idle;
    },
  };
}
