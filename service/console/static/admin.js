// Admin: sign in with the token (kept in sessionStorage), upload by drag and drop or file
// picker with progress, list, inspect and retire diffs. Nothing of this is in the page
// until a token the server accepts has been given.

import { adminToken, getJSON, request, uploadDiff } from "./api.js";
import { languageName, refresh } from "./catalog.js";
import { $, formatBytes, h, say, shortId, when } from "./dom.js";
import { devDetail, devSummary } from "./figures.js";
import { describeRefusal } from "./refusals.js";

function showInspect(entry) {
  const pre = $("diff-inspect");
  pre.textContent = JSON.stringify(entry, null, 2);
  pre.hidden = false;
  pre.focus();
}

/** Retire asks twice on the same button (no modal dialog): the second click retires. */
function retireButton(entry) {
  const button = h("button", { type: "button", class: "danger", "data-id": entry.id }, "Retire");
  button.addEventListener("click", async () => {
    if (!button.dataset.armed) {
      button.dataset.armed = "1";
      button.textContent = `Confirm retiring v${entry.version}`;
      return;
    }
    button.disabled = true;
    try {
      await request("DELETE", `v1/admin/diffs/${entry.id}`, { admin: true });
      say($("upload-message"), `Retired ${entry.kind} ${entry.key} v${entry.version}.`);
    } catch (err) {
      say($("upload-message"), err.message);
    }
    await reload();
  });
  return button;
}

function row(entry) {
  const key = entry.kind === "language" ? languageName(entry.key) : entry.key;
  return h("tr", { "data-id": entry.id },
    h("td", {}, entry.kind), h("td", {}, key), h("td", {}, `v${entry.version}`),
    h("td", {}, entry.task_type || ""),
    h("td", { class: "source" }, entry.kind === "task" && entry.language ? languageName(entry.language) : ""),
    h("td", { class: "dev", title: devDetail(entry.metrics?.dev) || null }, devSummary(entry.metrics?.dev)),
    h("td", { class: "num" }, entry.nnz.toLocaleString()),
    h("td", { class: "num" }, formatBytes(entry.size)), h("td", { class: "nowrap", title: entry.published_at }, when(entry.published_at)),
    h("td", {}, h("code", { title: entry.id }, shortId(entry.id))),
    h("td", {}, h("span", { class: "row-actions" },
      h("button", { type: "button", class: "secondary", onclick: () => showInspect(entry) }, "Inspect"),
      retireButton(entry))));
}

async function reload() {
  const { diffs } = await getJSON("v1/admin/diffs", { admin: true });
  const header = ["kind", "language / task", "version", "task type", "trained on", "dev scores", "nnz", "size", "published", "id", ""];
  $("diff-list").replaceChildren(diffs.length
    ? h("table", { id: "diff-table" },
      h("thead", {}, h("tr", {}, header.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, diffs.map(row)))
    : h("p", { class: "muted" }, "No diffs for this base yet."));
  await refresh();
}

async function upload(file) {
  const progress = $("upload-progress"), message = $("upload-message");
  progress.hidden = false;
  progress.value = 0;
  message.className = "";
  say(message, `Uploading ${file.name}…`);
  try {
    const entry = await uploadDiff(file, (fraction) => { progress.value = fraction; });
    say(message, `Published ${entry.kind} ${entry.key} v${entry.version} (${shortId(entry.id)}).`);
    await reload();
  } catch (err) {
    const { sentence, detail } = describeRefusal(err.status, err.message);
    message.className = "error";
    message.replaceChildren(sentence, h("br"), h("small", { id: "upload-detail", class: "muted" }, detail));
    message.hidden = false;
  } finally {
    progress.hidden = true;
  }
}

function wireUpload() {
  const zone = $("upload-zone");
  const over = (on) => (event) => { event.preventDefault(); zone.classList.toggle("over", on); };
  zone.addEventListener("dragenter", over(true));
  zone.addEventListener("dragover", over(true));
  zone.addEventListener("dragleave", over(false));
  zone.addEventListener("drop", (event) => {
    over(false)(event);
    const file = event.dataTransfer.files[0];
    if (file) upload(file);
  });
  $("upload-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) upload(file);
    event.target.value = ""; // the same file again is a new attempt
  });
}

function signedIn(on) {
  $("admin-login").hidden = on;
  if (!on) { $("admin-area").replaceChildren(); return; }
  $("admin-area").replaceChildren($("admin-template").content.cloneNode(true));
  $("admin-signout").addEventListener("click", () => { adminToken.clear(); signedIn(false); });
  wireUpload();
  reload().catch((err) => say($("upload-message"), err.message));
}

async function signIn(event) {
  event.preventDefault();
  const token = $("admin-token").value;
  try {
    await getJSON("v1/admin/diffs", { admin: true, token }); // the server is the judge of a token
  } catch (err) {
    say($("admin-login-error"), err.message);
    return;
  }
  say($("admin-login-error"), "");
  $("admin-token").value = "";
  adminToken.set(token);
  signedIn(true);
}

export function initAdmin(enabled) {
  $("admin-disabled").hidden = enabled;
  $("admin-login").hidden = !enabled;
  if (!enabled) return;
  $("admin-login").addEventListener("submit", signIn);
  if (adminToken.get()) signedIn(true);
}
