// One prediction drawn the way a person reads it, per task type. Spans (entities, answers)
// are cut from the text that was sent, by the character offsets the server returns, so what
// is shown between and around them is the person's text verbatim.

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

/** The input text with each entity marked in place: `text.slice(start, end)` is what the
 * model labelled; the text between entities (spaces, newlines, punctuation) stays plain.
 * Grouped entities carry `entity_group`, single tokens (aggregation none) `entity`. */
function tokenClassification(p, { input }) {
  const text = typeof input === "string" ? input : "";
  const line = h("p", { class: "ner-text" });
  let at = 0;
  for (const e of p.entities) {
    if (e.start < at || e.end > text.length) continue; // overlapping or outside: never cut the text twice
    if (e.start > at) line.append(text.slice(at, e.start));
    line.append(highlight(text.slice(e.start, e.end), e.entity_group ?? e.entity, e.score));
    at = e.end;
  }
  if (at < text.length) line.append(text.slice(at));
  const summary = p.entities.length ? null : h("p", { class: "muted" }, "No entities found.");
  return h("div", {}, line, summary);
}

/** One bar per label, most probable first, as the server sorted them. */
function sequenceClassification(p) {
  return h("div", { class: "bars" },
    h("p", {}, "Label: ", h("strong", { class: "answer-label" }, p.label), ` (${score(p.score)})`),
    p.labels.map((r) => bar(r.label, r.score, r.label === p.label)));
}

function questionAnswering(p, { input }) {
  const context = input.context;
  if (p.answer === null || p.answer === undefined) return h("p", { class: "muted" }, "No answer found in the context.");
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
    h("p", {}, `Mask ${i + 1}: `, h("strong", { class: "answer-label" }, candidates[0]?.token_str ?? "")),
    candidates.map((c, rank) => bar(c.token_str, c.score, rank === 0)))));
}

const RENDERERS = {
  "token-classification": tokenClassification,
  "sequence-classification": sequenceClassification,
  "question-answering": questionAnswering,
  "fill-mask": fillMask,
};

/** context: {input (what was sent)}. */
export function renderPrediction(taskType, prediction, context) {
  const render = RENDERERS[taskType];
  return render ? render(prediction, context) : h("pre", {}, JSON.stringify(prediction, null, 2));
}
