// One prediction drawn the way a person reads it, per task type.

import { bar, h, score } from "./dom.js";

/** A stable hue per entity type so PER is the same colour in every answer. */
function hue(type) {
  let n = 0;
  for (const c of type) n = (n * 31 + c.charCodeAt(0)) % 360;
  return n;
}

function highlight(text, type, value) {
  return h("mark", { class: "entity", "data-type": type, style: `--hue:${hue(type)}` },
    h("span", { class: "entity-text" }, text),
    h("span", { class: "entity-label" }, `${type} ${score(value)}`));
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** Words with entity spans marked inline. Tag sets without BIO prefixes (POS) mark every
 * word with its tag instead, since there are no spans to join. */
function tokenClassification(p) {
  const bio = p.labels.some((l) => /^[BI]-/.test(l));
  const spans = bio
    ? p.entities.map((e) => ({ ...e, score: mean(p.scores.slice(e.start, e.end)) }))
    : p.words.map((w, i) => ({ type: p.labels[i], start: i, end: i + 1, text: w, score: p.scores[i] }));
  const line = h("p", { class: "ner-text" });
  let i = 0;
  for (const span of spans) {
    if (span.start > i) line.append(p.words.slice(i, span.start).join(" "), " ");
    line.append(highlight(span.text, span.type, span.score), " ");
    i = span.end;
  }
  if (i < p.words.length) line.append(p.words.slice(i).join(" "));
  const summary = bio && !spans.length ? h("p", { class: "muted" }, "No entities found.") : null;
  return h("div", {}, line, summary);
}

function softmax(logits) {
  const top = Math.max(...logits);
  const exps = logits.map((x) => Math.exp(x - top));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((x) => x / sum);
}

function sequenceClassification(p, { labels }) {
  const probs = softmax(p.logits);
  const rows = probs.map((prob, i) => ({ label: labels[i] ?? `label ${i}`, prob }))
    .sort((a, b) => b.prob - a.prob);
  return h("div", { class: "bars" },
    h("p", {}, "Label: ", h("strong", { class: "answer-label" }, p.label), ` (${score(p.score)})`),
    rows.map((r) => bar(r.label, r.prob, r.label === p.label)));
}

function questionAnswering(p, { input }) {
  const context = input.context;
  if (p.end <= p.start) return h("p", { class: "muted" }, "No answer found in the context.");
  return h("div", {},
    h("p", {}, "Answer: ", h("strong", { class: "answer-label" }, p.answer), ` (${score(p.score)})`),
    h("p", { class: "qa-context" },
      context.slice(0, p.start),
      h("mark", { class: "answer-span" }, context.slice(p.start, p.end)),
      context.slice(p.end)));
}

function fillMask(p) {
  if (!p.masks.length) return h("p", { class: "muted" }, "The text has no mask token.");
  return h("div", {}, p.masks.map((candidates, i) => h("div", { class: "bars" },
    h("p", {}, `Mask ${i + 1}: `, h("strong", { class: "answer-label" }, candidates[0]?.token ?? "")),
    candidates.map((c, rank) => bar(c.token, c.score, rank === 0)))));
}

const RENDERERS = {
  "token-classification": tokenClassification,
  "sequence-classification": sequenceClassification,
  "question-answering": questionAnswering,
  "fill-mask": fillMask,
};

/** context: {labels (the task's), input (what was sent)}. */
export function renderPrediction(taskType, prediction, context) {
  const render = RENDERERS[taskType];
  return render ? render(prediction, context) : h("pre", {}, JSON.stringify(prediction, null, 2));
}
