// Playground: pick a servable (language, task), type text, see the answer drawn for people,
// which diffs (ids, versions) made it and how long the round trip took. An answer is only
// ever shown beside the pair and text that produced it: an error or a change of pair clears
// it, and an answer that arrives after the pair changed is dropped.

import { request } from "./api.js";
import { catalog, languageInfo, languageName, onCatalog, pairType, taskInfo } from "./catalog.js";
import { $, h, say, shortId } from "./dom.js";
import { example } from "./examples.js";
import { about } from "./figures.js";
import { renderPrediction } from "./render.js";

// Fields per task type: [request field, label, element].
const FIELDS = {
  "token-classification": [["text", "Text", "textarea"]],
  "sequence-classification": [["text", "Text", "textarea"], ["text_pair", "Second text (optional)", "textarea"]],
  "question-answering": [["question", "Question", "input"], ["context", "Context", "textarea"]],
  "fill-mask": [["text", "Text with the mask token", "textarea"]],
};

const fieldId = (name) => `try-${name.replace("_", "-")}`;
let maskToken = "[MASK]";
let shownType = null;
let edited = false; // the person's own text survives a change of pair
let shownPair = null; // "language|task" the form (and any answer) is for
let asked = 0; // bumped by every run and every change of pair: a late answer is dropped

/** Hide the answer and the error: they belong to a pair or a text no longer shown. */
function clearAnswer() {
  asked += 1;
  $("try-result").replaceChildren();
  $("try-result").hidden = true;
  say($("try-error"), "");
}

export function setMaskToken(token) {
  if (token) maskToken = token;
}

function fillSelect(select, options, keep) {
  select.replaceChildren(...options.map(([value, text]) => h("option", { value }, text)));
  if (options.some(([value]) => value === keep)) select.value = keep;
}

/** The person's choice once there was one (even "none"); the first entry on first load. */
const choice = (select, first) => (select.options.length > 1 ? select.value : first ?? "");

function fillPickers({ languages, tasks }) {
  const language = $("try-language"), task = $("try-task");
  fillSelect(language, [["", "none: the task's source language"],
    ...languages.map((l) => [l.language, languageName(l.language)])], choice(language, languages[0]?.language));
  fillSelect(task, [["", "none: fill-mask with the language's MLM head"],
    ...tasks.map((t) => [t.task, t.task])], choice(task, tasks[0]?.task));
  update();
}

function buildFields(taskType) {
  const inputs = (FIELDS[taskType] || []).map(([name, label, tag]) =>
    h("label", { class: "field" }, label,
      h(tag, { id: fieldId(name), name, rows: tag === "textarea" ? 3 : null, oninput: () => { edited = true; } })));
  $("try-inputs").replaceChildren(...inputs);
  shownType = taskType;
}

function prefill() {
  const taskType = shownType;
  const values = example(taskType, $("try-language").value, maskToken);
  for (const [name] of FIELDS[taskType] || []) $(fieldId(name)).value = values[name] ?? "";
  edited = false;
}

/** What the catalog records about the pair: the task's source language and each diff's
 * dev scores ("ner: trained on English (en) · dev F1 0.81 (en)"). */
function describePair(language, task) {
  const t = task ? taskInfo(task) : null, l = language ? languageInfo(language) : null;
  const ofTask = t ? about(t.source_language, t.dev_metrics) : "";
  const ofLanguage = l ? about(null, l.dev_metrics) : "";
  return [ofTask && `${task}: ${ofTask}`, ofLanguage && `${languageName(language)}: ${ofLanguage}`]
    .filter(Boolean).join("; ");
}

/** Redraw the form for the selected pair; say why when it cannot answer. */
function update() {
  const language = $("try-language").value, task = $("try-task").value;
  const taskType = pairType(language, task);
  if (`${language}|${task}` !== shownPair) { clearAnswer(); shownPair = `${language}|${task}`; }
  $("try-about").textContent = taskType ? describePair(language, task) : "";
  $("try-run").disabled = !taskType;
  $("try-example").disabled = !taskType;
  $("try-type").textContent = taskType || "";
  $("try-hint").textContent = taskType ? ""
    : !catalog().languages.length && !catalog().tasks.length ? "No diffs are deployed for this base yet."
      : !task && language ? "This language diff has no MLM head: pick a task." : "Pick a language, a task or both.";
  if (!taskType) { $("try-inputs").replaceChildren(); shownType = null; return; }
  if (taskType !== shownType) { buildFields(taskType); prefill(); } else if (!edited) prefill();
}

function readInput(taskType) {
  const value = (name) => $(fieldId(name)).value;
  if (taskType === "question-answering") return { question: value("question"), context: value("context") };
  if (taskType === "sequence-classification" && value("text_pair").trim()) {
    return { text: value("text"), text_pair: value("text_pair") };
  }
  return value("text");
}

function describeDiffs(diffs) {
  return Object.entries(diffs).map(([kind, d]) =>
    h("span", { class: "diff-tag", title: d.id }, `${kind} v${d.version} `, h("code", {}, shortId(d.id))));
}

async function run(event) {
  event?.preventDefault();
  const language = $("try-language").value || null, task = $("try-task").value || null;
  const taskType = pairType(language, task);
  if (!taskType) return;
  const input = readInput(taskType);
  say($("try-error"), "");
  $("try-run").disabled = true;
  const mine = ++asked;
  const started = performance.now();
  try {
    const answer = await request("POST", "v1/predict", { body: { language, task, inputs: [input] } });
    if (mine !== asked) return; // the pair changed (or another run started) meanwhile
    const ms = performance.now() - started;
    const names = [language && languageName(language), task].filter(Boolean).join(" + ");
    const result = $("try-result");
    result.replaceChildren(
      h("p", { class: "result-meta" }, h("strong", {}, names), ` · ${answer.task_type} · `,
        h("span", { id: "try-time" }, `${ms.toFixed(0)} ms`), " · made by ", describeDiffs(answer.diffs)),
      renderPrediction(answer.task_type, answer.predictions[0], { input }));
    result.hidden = false;
  } catch (err) {
    if (mine !== asked) return;
    clearAnswer(); // the last answer was for another text: never leave it beside an error
    say($("try-error"), `${err.status ? `${err.status}: ` : ""}${err.message}`);
  } finally {
    $("try-run").disabled = !pairType($("try-language").value, $("try-task").value);
  }
}

/** Select a pair and run its example (the matrix calls this when a cell is clicked). */
export function tryPair(language, task) {
  $("try-language").value = language || "";
  $("try-task").value = task || "";
  update();
  if (!shownType) return;
  prefill();
  run();
}

export function initPlayground() {
  $("try-language").addEventListener("change", update);
  $("try-task").addEventListener("change", update);
  $("try-example").addEventListener("click", prefill);
  $("try-form").addEventListener("submit", run);
  onCatalog(fillPickers);
}
