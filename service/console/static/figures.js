// What a diff's producer recorded about it, in words: its dev scores (the `dev` part of the
// diff's metadata `metrics`, as /v1/catalog and /v1/admin/diffs give them) and, for a task,
// the language it was trained on. Shown by the playground, the matrix and the deployed list.

import { languageName } from "./catalog.js";

// The one figure a row has room for, by preference; every figure is in the tooltip.
const HEADLINE = [["f1", "F1"], ["accuracy", "accuracy"], ["exact_match", "exact match"], ["perplexity", "perplexity"]];

const number = (x) => String(Number(x.toPrecision(3)));

function headline(scores) {
  const found = HEADLINE.find(([key]) => typeof scores[key] === "number");
  return found ? `${found[1]} ${number(scores[found[0]])}` : null;
}

const isScores = (value) => value && typeof value === "object" && !Array.isArray(value);

/** [{source, scores}]: per source language for a task diff ({hau: {f1, ...}}), a single row
 * for a language diff ({mlm_loss, perplexity}) or a task trained without a named language. */
function bySource(dev) {
  if (!isScores(dev)) return [];
  const nested = Object.entries(dev).filter(([, v]) => isScores(v));
  if (!nested.length) return Object.keys(dev).length ? [{ source: null, scores: dev }] : [];
  return nested.map(([source, scores]) => ({ source: source === "dev" ? null : source, scores }));
}

/** "dev F1 0.812 (hau)", one part per source language; "" when nothing was recorded. */
export function devSummary(dev) {
  return bySource(dev).map(({ source, scores }) => {
    const text = headline(scores);
    return text ? `dev ${text}${source ? ` (${source})` : ""}` : null;
  }).filter(Boolean).join(", ");
}

/** Every recorded dev score, one source per line (for a tooltip). */
export function devDetail(dev) {
  return bySource(dev).map(({ source, scores }) =>
    `${source ? `${source}: ` : ""}${Object.entries(scores).filter(([, v]) => typeof v === "number")
      .map(([k, v]) => `${k} ${number(v)}`).join(", ")}`).join("\n");
}

/** "trained on Hausa (hau)", or "" when the task diff names no single source language. */
const sourceText = (language) => (language ? `trained on ${languageName(language)}` : "");

/** Source language and dev scores of a task (or dev scores of a language), joined. */
export function about(source, dev) {
  return [sourceText(source), devSummary(dev)].filter(Boolean).join(" · ");
}
