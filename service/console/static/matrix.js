// Matrix: every language x task of the loaded base, servable or not, with the versions that
// would answer, each task's source language and each diff's dev scores; a click on a
// servable cell runs the pair's example in the playground.

import { getJSON } from "./api.js";
import { languageName, onCatalog, pairType } from "./catalog.js";
import { $, h } from "./dom.js";
import { about, devDetail } from "./figures.js";

// The demo pairs' measured quality (GET /v1/info, demo.quality), keyed "language|task".
let quality = {};

async function loadQuality() {
  try {
    const demo = (await getJSON("v1/info")).demo;
    quality = Object.fromEntries((demo?.enabled ? demo.quality : []).map((q) => [`${q.language}|${q.task}`, q]));
  } catch (_) { quality = {}; }
}

/** "F1 43.7 (task alone 41.5)" under a cell whose language and task are both the demo's. */
function demoNote(language, task) {
  const q = language.demo && task.demo ? quality[`${language.language}|${task.task}`] : null;
  return q ? h("span", { class: "muted demo-f1", title: q.test }, h("br"), `demo: F1 ${q.f1} (task alone ${q.task_only_f1})`) : "";
}

const ALONE = { task: "", label: "alone (fill-mask)" };
const SOURCE = { language: "", label: "none (task's source language)" };

function cell(language, task, versions, onTry) {
  const servable = pairType(language.language, task.task) !== null;
  if (!servable) {
    const why = task.task ? "nothing to run" : "no MLM head in this language diff";
    return h("td", { class: "cell off", title: why }, h("span", { "aria-label": `not servable: ${why}` }, "—"));
  }
  const who = `${language.language ? languageName(language.language) : "no language diff"} with ${task.task || "its MLM head"}`;
  const recorded = [task.about && `${task.task}: ${task.about}`, language.about && `${language.label}: ${language.about}`]
    .filter(Boolean).join("; ");
  return h("td", { class: "cell on", title: recorded || null },
    h("button", {
      type: "button", class: "cell-button", "data-language": language.language, "data-task": task.task,
      "aria-label": `Try ${who}`, onclick: () => onTry(language.language, task.task),
    }, versions, demoNote(language, task)));
}

const version = (entry) => (entry.latest_version ? `v${entry.latest_version}${entry.demo ? " demo" : ""}` : "");

/** The header's second line: source language and dev scores, the full scores as a tooltip. */
const aboutLine = (entry) => (entry.about
  ? [h("br"), h("span", { class: "muted about", title: devDetail(entry.dev_metrics) || null }, entry.about)] : null);

function draw({ languages, tasks }, onTry) {
  if (!languages.length && !tasks.length) {
    $("matrix-table").replaceChildren(h("p", { class: "muted" }, "No diffs are deployed for this base yet."));
    return;
  }
  const columns = [...tasks.map((t) => ({ ...t, label: t.task, about: about(t.source_language, t.dev_metrics) })), ALONE];
  const rows = [...languages.map((l) => ({ ...l, label: languageName(l.language), about: about(null, l.dev_metrics) })), SOURCE];
  const head = h("tr", {}, h("th", { scope: "col" }, "language \\ task"),
    columns.map((t) => h("th", { scope: "col", "data-task": t.task }, t.label, h("br"),
      h("span", { class: "muted" }, [t.task_type, version(t)].filter(Boolean).join(" ")), aboutLine(t))));
  const body = rows.map((l) => h("tr", { "data-language": l.language },
    h("th", { scope: "row" }, l.label, " ", h("span", { class: "muted" }, version(l)), aboutLine(l)),
    columns.map((t) => cell(l, t, [version(l), version(t)].filter(Boolean).join(" + "), onTry))));
  $("matrix-table").replaceChildren(h("table", { id: "matrix-grid" }, h("thead", {}, head), h("tbody", {}, body)));
}

export function initMatrix(onTry) {
  onCatalog(async (current) => {
    await loadQuality();
    draw(current, onTry);
  });
}
