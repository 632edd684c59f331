// Live status from GET /v1/info: what is loaded, plan-cache use, and request and switch
// rates computed from the server's own counters between two polls.

import { getJSON } from "./api.js";
import { $, bar, formatBytes, h, shortId } from "./dom.js";

const POLL_MS = 2000;
const WINDOW = 5; // rates over the last 5 polls (~10 s): steadier than between two polls
const samples = [];

function rate(info, key) {
  const oldest = samples[0];
  const seconds = oldest ? (info.at - oldest.at) / 1000 : 0;
  return seconds > 0 ? `${((info[key] - oldest[key]) / seconds).toFixed(2)} /s` : "…";
}

/** The demo diffs in use (kind, key, version) with the pairs' measured F1, or why none. */
function demoLine(demo) {
  if (!demo || !demo.enabled) return h("span", { class: "muted", id: "status-demo" }, `off: ${demo?.reason ?? "not installed"}`);
  const diffs = demo.diffs.map((d) => `${d.kind} ${d.key}${d.version ? ` v${d.version}` : ""}${d.state === "in use" ? "" : ` (${d.state})`}`);
  const quality = demo.quality.map((q) => `${q.language}+${q.task} F1 ${q.f1} (task alone ${q.task_only_f1})`);
  return h("span", { id: "status-demo" }, diffs.join(", "), quality.length ? h("br") : "",
    h("span", { class: "muted" }, quality.join("; ")));
}

function draw(info) {
  const cache = info.plan_cache;
  const used = cache.budget ? cache.bytes / cache.budget : 0;
  const items = [
    ["Model", info.base_model],
    ["Fingerprint", h("code", { title: info.base_fingerprint }, shortId(info.base_fingerprint))],
    ["Device", info.device],
    ["dtype", info.dtype_setting === "auto" ? `${info.dtype} (auto)` : info.dtype],
    ["Demo", demoLine(info.demo)],
    ["Plan cache", h("div", {}, bar(`${formatBytes(cache.bytes)} of ${formatBytes(cache.budget)}`, Math.min(used, 1), false,
      `${(100 * used).toFixed(used < 0.1 ? 3 : 1)}%`),
      h("span", { class: "muted" }, `${cache.entries} entries`))],
    ["Requests", h("span", { id: "status-requests" }, `${rate(info, "requests_total")} (${info.requests_total} in all)`)],
    ["Switches", h("span", { id: "status-switches" }, `${rate(info, "switches_total")} (${info.switches_total} in all)`)],
    ["Queue", `${info.queue_depth} waiting`],
    ["Uptime", `${Math.round(info.uptime_s)} s`],
  ];
  $("status-list").replaceChildren(...items.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
  samples.push(info);
  if (samples.length > WINDOW) samples.shift();
}

export async function fetchInfo() {
  const info = await getJSON("v1/info");
  info.at = performance.now();
  const demo = info.demo?.enabled ? `, demo diffs: ${info.demo.diffs.filter((d) => d.state === "in use").map((d) => d.key).join(", ")}` : "";
  $("model-line").textContent = `${info.base_model} on ${info.device}, ${info.dtype}${demo}`;
  return info;
}

/** Poll while the status panel is shown; `visible()` says whether it is. */
export function startStatus(visible) {
  const tick = async () => {
    if (visible() && !document.hidden) {
      try { draw(await fetchInfo()); } catch (err) { $("model-line").textContent = `status: ${err.message}`; }
    }
    setTimeout(tick, POLL_MS);
  };
  tick();
}
