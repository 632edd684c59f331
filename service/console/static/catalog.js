// What the loaded base can serve, from GET /v1/catalog, shared by the playground and the
// matrix. Panels subscribe; an upload or a retirement calls refresh() and both redraw.

import { getJSON } from "./api.js";

let names = {};
let current = { languages: [], tasks: [] };
const listeners = [];

export const FILL_MASK = "fill-mask";

/** "Hausa (hau)", or the bare code when the bundled table does not know it. */
export function languageName(code) {
  const name = names[code] || names[code.split(/[-_]/)[0]];
  return name ? `${name} (${code})` : code;
}

export const catalog = () => current;
export const taskInfo = (task) => current.tasks.find((t) => t.task === task);
export const languageInfo = (language) => current.languages.find((l) => l.language === language);

/** The task type a (language, task) request gets, or null when the pair cannot answer:
 * nothing named, or a language alone whose diff has no MLM head. */
export function pairType(language, task) {
  if (task) return taskInfo(task)?.task_type ?? null;
  if (language && languageInfo(language)?.task_type === FILL_MASK) return FILL_MASK;
  return null;
}

export function onCatalog(listener) {
  listeners.push(listener);
}

export async function loadNames() {
  names = await getJSON("console/languages.json");
}

export async function refresh() {
  current = await getJSON("v1/catalog");
  for (const listener of listeners) listener(current);
}
