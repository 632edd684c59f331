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

export function shortId(id) {
  return id ? id.slice(0, 12) : "";
}

export function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export const score = (x) => x.toFixed(2);

/** A horizontal bar for a value in [0, 1], with its number beside it. */
export function bar(label, value, strong = false) {
  return h("div", { class: strong ? "bar-row top" : "bar-row" },
    h("span", { class: "bar-label" }, label),
    h("span", { class: "bar", role: "img", "aria-label": `${label}: ${score(value)}` },
      h("span", { class: "bar-fill", style: `width:${(100 * value).toFixed(1)}%` })),
    h("span", { class: "bar-value" }, score(value)));
}

/** Show a message in a hidden-by-default element, or hide it when text is empty. */
export function say(el, text) {
  el.textContent = text || "";
  el.hidden = !text;
}
