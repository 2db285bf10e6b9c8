// The training progress's ETA, honest from the first step: step 1 compiles
// the GPU programs (and the autotuner times its choices), so it says nothing
// about the steps after it. The clock times the gaps between step events
// after the first of a run (or of a resume, or after a pause ends), says
// "estimating…" until MIN_TIMED gaps are timed, then the median gap times
// the steps left: one slow step (a held-out evaluation, a checkpoint) does
// not swing it.

export const MIN_TIMED = 2;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};

/** Seconds as "42 s", "3 min 20 s" or "1 h 5 min". */
export function duration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export function stepClock(now = () => performance.now()) {
  let last = null;
  const gaps = [];
  return {
    /** A new run (or a resumed one): its first step compiles again. */
    reset() { last = null; gaps.length = 0; },
    /** Going on after a pause: the gap across it is not a step's time. */
    skip() { last = null; },
    /** The ETA after step event `ev`: {text, seconds?}. */
    step(ev) {
      const t = now();
      if (last !== null) gaps.push((t - last) / 1000);
      last = t;
      if (gaps.length < MIN_TIMED) return { text: "estimating…" };
      const seconds = median(gaps) * Math.max(0, ev.totalSteps - ev.step);
      return { text: duration(seconds), seconds };
    },
  };
}
