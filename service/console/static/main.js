// Entry point: tabs by URL hash, then each panel wired to the shared catalog.

import { initAdmin } from "./admin.js";
import { loadNames, refresh } from "./catalog.js";
import { $ } from "./dom.js";
import { initMatrix } from "./matrix.js";
import { initPlayground, setMaskToken, tryPair } from "./playground.js";
import { fetchInfo, startStatus } from "./status.js";

const TABS = ["playground", "matrix", "admin", "status"];
const currentTab = () => (TABS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "playground");

function showTab() {
  const tab = currentTab();
  for (const name of TABS) $(name).hidden = name !== tab;
  for (const link of document.querySelectorAll("[data-tab]")) {
    if (link.dataset.tab === tab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function main() {
  showTab();
  window.addEventListener("hashchange", showTab);
  initPlayground();
  initMatrix((language, task) => { location.hash = "#playground"; tryPair(language, task); });
  try {
    const [info] = await Promise.all([fetchInfo(), loadNames()]);
    setMaskToken(info.mask_token);
    initAdmin(info.admin_enabled);
    await refresh();
  } catch (err) {
    $("model-line").textContent = `The service did not answer: ${err.message}`;
  }
  startStatus(() => currentTab() === "status");
  document.body.dataset.ready = "1"; // tests and screenshots wait for this
}

main();
