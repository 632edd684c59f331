// Small DOM and formatting helpers shared by every panel (no framework, no build step).

/** h("tag", {attr: value, onclick: fn}, ...children): an element; null children are skipped. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "style") el.style.cssText = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) el.append(child);
  }
  return el;
}

export const $ = (id) => document.getElementById(id);

/** The first 12 hex digits of an id or fingerprint (a "sha256:" prefix is kept). */
export function shortId(id) {
  if (!id) return "";
  const prefix = id.startsWith("sha256:") ? "sha256:" : "";
  return prefix + id.slice(prefix.length, prefix.length + 12);
}

/** "2026-01-02T03:04:05.678+00:00" -> "2026-01-02 03:04:05" (the server writes UTC). */
export const when = (iso) => (iso ? `${iso.slice(0, 10)} ${iso.slice(11, 19)}` : "");

export function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export const score = (x) => x.toFixed(2);

/** A horizontal bar for a value in [0, 1], with its number (or `shown`) beside it. */
export function bar(label, value, strong = false, shown = score(value)) {
  return h("div", { class: strong ? "bar-row top" : "bar-row" },
    h("span", { class: "bar-label" }, label),
    h("span", { class: "bar", role: "img", "aria-label": `${label}: ${shown}` },
      h("span", { class: "bar-fill", style: `width:${(100 * value).toFixed(1)}%` })),
    h("span", { class: "bar-value" }, shown));
}

/** Show a message in a hidden-by-default element, or hide it when text is empty. */
export function say(el, text) {
  el.textContent = text || "";
  el.hidden = !text;
}
