// Recovering from a lost GPU, in the worker. A device is lost when the driver
// resets, when a phone's browser takes the GPU from a background tab, or when
// `Gpu.destroy()` is called (the tests do). Everything on the old device is
// gone; what it takes to go on lives here, in the worker's memory: the last
// model load (its source: the default model, a URL, or the picked File
// objects), the run in progress with its last autosaved checkpoint, and the
// files of the adapter a finished run left. On a loss this says so to the
// page ("gpu-lost"), gets a new device, reloads the model through the worker's
// own load path, and resumes the run from the checkpoint (the steps after it
// are computed again; resuming is exact) or puts the finished adapter back
// ("gpu-recovered"). Calls that failed because of the loss are not errors.
// The page shows those two messages in the words of lostNotice and recoveredNotice.

// More losses than this within a minute are shown as an error instead (a GPU that keeps failing).
const MAX_LOSSES_PER_MINUTE = 3;

/**
 * hooks: post(msg), createGpu() → the new Gpu (made current), replay(msg) → runs a worker message
 * (load, resume-checkpoint, train) as the page would send it, enqueue(fn) → runs fn after the message in
 * flight, importAdapter(files) → puts a finished run's adapter back on the new model, reloaded() → after the model
 * is loaded again (the chat's kept adapters go back on it).
 */
export function recovery(hooks) {
  let gpu = null;
  let load = null; // the last "load" message
  let run = null; // { config, data, evalData }: the run in progress
  let checkpoint = null; // { step, bytes }: its last autosave
  let adapter = null; // the files of the adapter the last finished run left
  let pending = null; // a "train" or "resume-checkpoint" the loss stopped before its run began (it came with a load)
  let losses = []; // when the recent losses happened (performance.now())

  const lostNow = (e) => e?.name === "DeviceLostError" || Boolean(gpu?.isLost());

  async function recover(reason) {
    const start = performance.now();
    if (losses.length > MAX_LOSSES_PER_MINUTE) {
      hooks.post({ type: "error", context: "gpu", message: `the GPU was lost ${losses.length} times within a minute (${reason}): ` +
        "reload the page, or close other tabs and programs that use the GPU" });
      return;
    }
    await hooks.createGpu();
    if (load) {
      await hooks.replay({ ...load, replayed: true });
      await hooks.reloaded();
    }
    const startAgain = run ? null : pending;
    pending = null;
    const resumeAt = run ? checkpoint?.step ?? 0 : startAgain ? startAgain.step ?? 0 : null;
    hooks.post({ type: "gpu-recovered", seconds: (performance.now() - start) / 1000, sinceLoss: (performance.now() - losses.at(-1)) / 1000,
      resumeAt, adapter: !run && !startAgain && Boolean(adapter && load) });
    if (startAgain) {
      await hooks.replay({ ...startAgain, replayed: true });
    } else if (run && checkpoint) {
      await hooks.replay({ type: "resume-checkpoint", bytes: checkpoint.bytes.slice(), ...run, replayed: true });
    } else if (run) {
      hooks.post({ type: "resumed-checkpoint", step: 0 }); // no autosave yet: the run starts again from its first step
      await hooks.replay({ type: "train", ...run, replayed: true });
    } else if (adapter && load) {
      await hooks.importAdapter(adapter);
    }
  }

  function onLost(lostGpu, reason) {
    if (lostGpu !== gpu) return; // an old device, already replaced
    const now = performance.now();
    losses = [...losses.filter((t) => now - t < 60_000), now];
    console.warn(`webpeft: the GPU device was lost (${reason}); recovering`);
    hooks.post({ type: "gpu-lost", reason, training: Boolean(run), resumeAt: run ? checkpoint?.step ?? 0 : null });
    hooks.enqueue(() => recover(reason));
  }

  return {
    /** A new current device: its loss starts a recovery. */
    watch(g) {
      gpu = g;
      g.lost.then((reason) => onLost(g, reason));
    },
    /** The test hook (and a page's "give the GPU back"): loses the device on purpose. */
    destroy() { gpu?.destroy(); },
    loading(msg) { load = msg; },
    /** A run starts at `step` (msg: the train or resume-checkpoint message, whose bytes are a checkpoint). */
    training(msg, step) {
      run = { config: msg.config, data: msg.data, evalData: msg.evalData };
      checkpoint = msg.bytes ? { step, bytes: msg.bytes.slice() } : null;
      adapter = null;
    },
    /** Throws a "DeviceLostError" when the device is lost (a paused run checks, so it ends and can be resumed). */
    check() {
      if (gpu?.isLost()) throw Object.assign(new Error("the GPU device was lost"), { name: "DeviceLostError" });
    },
    /** A queued message that failed because of the loss: a run it would have started is started after the reload. */
    interrupted(msg) {
      if (!run && (msg?.type === "train" || msg?.type === "resume-checkpoint")) pending = msg;
    },
    /** An autosave: a copy is kept, since the original is handed to the page. */
    saved(step, bytes) { checkpoint = { step, bytes: bytes.slice() }; },
    /** The run ended (done or cancelled) and left these adapter files. */
    finished(files) { run = null; checkpoint = null; adapter = files; },
    /**
     * Whether `e` (a failed call) came from a lost device; then the recovery under way handles it. A
     * driver's loss can reach a call before the device reports it: wait a moment for the report.
     */
    async isLoss(e) {
      if (lostNow(e)) return true;
      if (!gpu) return false;
      return Promise.race([gpu.lost.then(() => true), new Promise((ok) => setTimeout(() => ok(false), 200))]);
    },
  };
}

/** What the page says when the worker reports a lost GPU ("gpu-lost"). */
export function lostNotice(m) {
  const training = !m.training ? "" : m.resumeAt ? ` Training will go on from step ${m.resumeAt}, the last autosave.` :
    " Training will start again from its first step (there was no autosave yet).";
  return `The GPU stopped working (${m.reason}): the graphics driver reset, or the browser took the GPU back from this ` +
    `tab. Getting a new GPU device and loading the model again…${training}`;
}

/** What the page says once the worker has a new device and the model ("gpu-recovered"). */
export function recoveredNotice(m) {
  const then = m.resumeAt ? ` Training goes on from step ${m.resumeAt}; the steps after it are computed again.` :
    m.resumeAt === 0 ? " Training starts again." : m.adapter ? " The trained adapter is kept." : "";
  return `The GPU stopped working and was replaced: a new device and the model reloaded in ${m.seconds.toFixed(1)} s.${then}`;
}
