"""The web console in a real headless Chromium against a real `csft serve` with a tiny base:
entities are marked by character offsets in the text as typed, bars and spans come from the
answer's own fields, an error or a change of pair clears the answer, a Matrix click runs the
pair, an upload through the page reaches the matrix, a refusal is said in words with the
server's detail beside it, recorded dev scores and source languages are shown, admin controls
need a token. Skips when Chromium is absent.

``CSFT_CONSOLE_SCREENSHOTS=docs python -m pytest tests/test_console_browser.py`` also writes
docs/console-*.png (the README's screenshots)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests import console_browser
from diffs_store.base import load_base_model
from diffs_store.metadata import DiffKind
from tests.console_browser import open_console, wait
from tests.support import LANGUAGES, TASKS, make_base_dir, make_diffs, random_diff, running_server, upload

pytestmark = pytest.mark.browser

if console_browser.missing():
    pytest.skip(console_browser.missing(), allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

TOKEN = "console-token"
PRELOADED = [("language", "hau"), ("language", "swa"), ("task", "qa"), ("task", "pos")]
# Diffs with figures as the trainer records them (the same deltas as tiny_diffs'), and the
# words the console shows for them.
RECORDED = {
    ("task", "ner"): ("hau", {"train": {"steps": 10}, "dev": {"hau": {"accuracy": 0.9634, "precision": 0.8, "recall": 0.826, "f1": 0.8123}}}),
    ("task", "nli"): ("en", {"dev": {"en": {"accuracy": 0.7142}}}),
    ("language", "pcm"): ("pcm", {"dev": {"mlm_loss": 2.5, "perplexity": 12.18, "masked_tokens": 900}}),
}
SHOWN = {"ner": "trained on Hausa (hau) · dev F1 0.812 (hau)", "nli": "trained on English (en) · dev accuracy 0.714 (en)",
         "pcm": "dev perplexity 12.2"}
CSS = By.CSS_SELECTOR


@pytest.fixture(scope="module")
def server(tiny_base_dir, tiny_diffs, tmp_path_factory):
    with running_server(tiny_base_dir, tmp_path_factory.mktemp("console-data"), TOKEN, TORCH_THREADS="1") as url:
        for kind, key in PRELOADED:
            assert upload(url, TOKEN, key, tiny_diffs[(kind, key)]).status_code == 201
        for (kind, key), (language, metrics) in RECORDED.items():
            assert upload(url, TOKEN, key, recorded_diff(tiny_base_dir, kind, key, language, metrics)).status_code == 201
        assert upload(url, TOKEN, "wol", headless_language(tiny_base_dir, "wol")).status_code == 201
        yield url


def recorded_diff(base_dir, kind: str, key: str, language: str, metrics: dict) -> bytes:
    """tiny_diffs' diff for (kind, key), with a source language and recorded metrics."""
    model, spec = load_base_model(str(base_dir))
    if kind == "language":
        return random_diff(model, spec, DiffKind.LANGUAGE, language=key, seed=100 + LANGUAGES.index(key), density=0.1,
                           metrics=metrics).to_bytes()
    task_type, labels = TASKS[key]
    return random_diff(model, spec, DiffKind.TASK, language=language, task=key, task_type=task_type, labels=labels,
                       seed=200 + list(TASKS).index(key), density=0.1, metrics=metrics).to_bytes()


def headless_language(base_dir, language: str) -> bytes:
    """A language diff without an MLM head: it composes with tasks but cannot answer alone."""
    model, spec = load_base_model(str(base_dir))
    return random_diff(model, spec, DiffKind.LANGUAGE, language=language, seed=5, density=0.1, with_head=False).to_bytes()


@pytest.fixture(scope="module")
def driver():
    browser = console_browser.start_chromium()
    yield browser
    browser.quit()


def text_of(driver, element_id: str) -> str:
    return wait(driver, EC.visibility_of_element_located((By.ID, element_id))).text


def run_pair(driver, language: str, task: str, **fields: str) -> None:
    """Pick the pair, fill the fields (by request field name), press Run, wait for the answer."""
    Select(driver.find_element(By.ID, "try-language")).select_by_value(language)
    Select(driver.find_element(By.ID, "try-task")).select_by_value(task)
    for name, value in fields.items():
        box = driver.find_element(By.ID, f"try-{name.replace('_', '-')}")
        box.clear()
        box.send_keys(value)
    driver.execute_script("document.getElementById('try-result').hidden = true")
    driver.find_element(By.ID, "try-run").click()
    wait(driver, EC.visibility_of_element_located((By.ID, "try-result")))


def sign_in(driver, token: str) -> None:
    box = wait(driver, EC.visibility_of_element_located((By.ID, "admin-token")))
    box.send_keys(token)
    driver.find_element(CSS, "#admin-login button[type=submit]").click()


# Where each mark starts in the text as shown (labels left out), and that text.
SHOWN_TEXT = """
const line = arguments[0].cloneNode(true);
for (const label of line.querySelectorAll('.entity-label')) label.remove();
const spans = []; let at = 0;
for (const node of line.childNodes) {
  if (node.nodeName === 'MARK') spans.push([at, at + node.textContent.length]);
  at += node.textContent.length;
}
return [line.textContent, spans];"""


def test_entities_are_marked_by_character_offsets_in_the_text_as_typed(server, driver):
    # repeated spaces, a newline and punctuation: shown verbatim around the entities
    candidates = ["john  visited kano,\nwith mary.", "mary lives in lagos, and works at the bank.",
                  "the president went to abuja (with john).", "google said:  the city market is new!"]
    api = [httpx.post(f"{server}/v1/predict", json={"language": "hau", "task": "ner", "inputs": [text]}).json()
           for text in candidates]
    text, answer = next((t, a) for t, a in zip(candidates, api) if a["predictions"][0]["entities"])
    open_console(driver, server)
    run_pair(driver, "hau", "ner", text=text)
    entities = answer["predictions"][0]["entities"]
    shown, spans = driver.execute_script(SHOWN_TEXT, driver.find_element(CSS, "#try-result .ner-text"))
    assert shown == text  # every character of the input, once, in order
    assert spans == [[e["start"], e["end"]] for e in entities]
    marks = driver.find_elements(CSS, "#try-result mark.entity")
    assert [m.get_attribute("data-type") for m in marks] == [e["entity_group"] for e in entities]
    assert [m.find_element(CSS, ".entity-text").get_attribute("textContent") for m in marks] == \
        [text[e["start"]:e["end"]] for e in entities]
    for mark, entity in zip(marks, entities):
        group, value = mark.find_element(CSS, ".entity-label").text.split()
        assert group == entity["entity_group"] and abs(float(value) - entity["score"]) <= 0.006
    meta = driver.find_element(CSS, "#try-result .result-meta").text
    for kind, diff in answer["diffs"].items():
        assert f"{kind} v{diff['version']} {diff['id'][:12]}" in meta
    assert "Hausa (hau)" in meta and driver.find_element(By.ID, "try-time").text.endswith(" ms")


@pytest.mark.parametrize(("language", "task", "text", "expected"), [
    ("swa", "nli", "mary said the city is new", lambda p: [(r["label"], r["score"]) for r in p["labels"]]),
    ("pcm", "", "the [MASK] said", lambda p: [(c["token_str"], c["score"]) for c in p["masks"][0]]),
])
def test_bars_for_classification_and_fill_mask(server, driver, language, task, text, expected):
    body = {"language": language or None, "task": task or None, "inputs": [text]}
    want = expected(httpx.post(f"{server}/v1/predict", json=body).json()["predictions"][0])
    open_console(driver, server)
    fields = {"text": text, "text_pair": ""} if task == "nli" else {"text": text}
    run_pair(driver, language, task, **fields)
    rows = driver.find_elements(CSS, "#try-result .bar-row")
    assert [r.find_element(CSS, ".bar-label").text for r in rows] == [label for label, _ in want]
    assert [float(r.find_element(CSS, ".bar-value").text) for r in rows] == pytest.approx([v for _, v in want], abs=0.006)
    assert driver.find_element(CSS, "#try-result .bar-row.top .bar-label").text == want[0][0]


def test_question_answering_marks_the_span(server, driver):
    context = "mary  lives in nairobi,\nand works at the bank."
    question = "where does mary live"
    answer = httpx.post(f"{server}/v1/predict", json={"language": "swa", "task": "qa",
                        "inputs": [{"question": question, "context": context}]}).json()["predictions"][0]
    open_console(driver, server)
    run_pair(driver, "swa", "qa", question=question, context=context)
    if answer["answer"] is not None:
        span = driver.find_element(CSS, "#try-result mark.answer-span").get_attribute("textContent")
        assert span == context[answer["start"]:answer["end"]] == answer["answer"]
        assert driver.find_element(CSS, "#try-result .qa-context").get_attribute("textContent") == context
    else:
        assert "No answer" in driver.find_element(By.ID, "try-result").text


def test_an_error_or_a_change_of_pair_clears_the_answer(server, driver):
    open_console(driver, server)
    run_pair(driver, "pcm", "", text="the [MASK] said")
    box = driver.find_element(By.ID, "try-text")
    box.clear()
    box.send_keys("no mask token here")  # the server refuses it: 422
    driver.find_element(By.ID, "try-run").click()
    assert "mask token" in text_of(driver, "try-error")
    result = driver.find_element(By.ID, "try-result")
    assert not result.is_displayed() and not result.find_elements(CSS, ".bar-row")
    run_pair(driver, "swa", "nli", text="mary said", text_pair="")
    assert not driver.find_element(By.ID, "try-error").is_displayed()
    Select(driver.find_element(By.ID, "try-task")).select_by_value("ner")
    assert not result.is_displayed() and not result.find_elements(CSS, ".bar-row")


# The page's fetch, slowed down: an answer arrives 1.5 s after it was asked for, and
# window.answered says when it has (and its body has been read by the page, 0.3 s later).
SLOW_FETCH = """
const real = window.fetch;
window.answered = false;
window.fetch = (...args) => new Promise((resolve) => setTimeout(() => resolve(real(...args).then((r) => {
  setTimeout(() => { window.answered = true; }, 300); return r; })), 1500));"""


def test_an_answer_that_arrives_after_a_change_of_pair_is_dropped(server, driver):
    open_console(driver, server)
    Select(driver.find_element(By.ID, "try-language")).select_by_value("swa")
    Select(driver.find_element(By.ID, "try-task")).select_by_value("nli")
    driver.execute_script(SLOW_FETCH)
    driver.find_element(By.ID, "try-run").click()
    Select(driver.find_element(By.ID, "try-task")).select_by_value("ner")  # while swa + nli is asked
    wait(driver, lambda d: d.execute_script("return window.answered"))
    result = driver.find_element(By.ID, "try-result")
    assert not result.is_displayed() and not result.find_elements(CSS, ".bar-row")
    assert not driver.find_element(By.ID, "try-error").is_displayed()


def test_upload_through_the_page_appears_in_the_matrix(server, driver, tiny_diffs, tmp_path):
    path = tmp_path / "yor.safetensors"
    path.write_bytes(tiny_diffs[("language", "yor")])
    open_console(driver, server, "admin")
    sign_in(driver, TOKEN)
    wait(driver, EC.presence_of_element_located((By.ID, "upload-file"))).send_keys(str(path))
    wait(driver, EC.text_to_be_present_in_element((By.ID, "upload-message"), "Published language yor v1"))
    driver.find_element(CSS, "a[data-tab=matrix]").click()
    cell = wait(driver, EC.element_to_be_clickable((CSS, "button[data-language=yor][data-task=ner]")))
    assert cell.text == "v1 + v1"
    assert "Yoruba (yor)" in driver.find_element(CSS, "tr[data-language=yor] th").text
    cell.click()  # runs the pair's example
    wait(driver, EC.visibility_of_element_located((By.ID, "playground")))
    assert Select(driver.find_element(By.ID, "try-language")).first_selected_option.get_attribute("value") == "yor"
    assert Select(driver.find_element(By.ID, "try-task")).first_selected_option.get_attribute("value") == "ner"
    assert driver.find_element(By.ID, "try-text").get_attribute("value") == "Ààrẹ Bola Tinubu lọ sí Èkó láti Abuja"
    meta = wait(driver, EC.visibility_of_element_located((CSS, "#try-result .result-meta"))).text
    assert "Yoruba (yor) + ner" in meta and "token-classification" in meta


def test_recorded_dev_scores_and_source_language_are_shown(server, driver):
    open_console(driver, server, "matrix")
    wait(driver, EC.presence_of_element_located((By.ID, "matrix-grid")))
    for task in ("ner", "nli"):
        assert driver.find_element(CSS, f"th[data-task={task}] .about").text == SHOWN[task]
    assert driver.find_element(CSS, "tr[data-language=pcm] th .about").text == SHOWN["pcm"]
    assert "f1 0.812" in driver.find_element(CSS, "th[data-task=ner] .about").get_attribute("title")
    assert driver.find_element(CSS, "th[data-task=qa] .about").text == "trained on English (en)"  # no dev scores
    assert not driver.find_elements(CSS, "tr[data-language=hau] th .about")  # nothing recorded, nothing said
    cell = driver.find_element(CSS, "button[data-language=pcm][data-task=ner]").find_element(By.XPATH, "..")
    assert cell.get_attribute("title") == f"ner: {SHOWN['ner']}; Nigerian Pidgin (pcm): {SHOWN['pcm']}"
    open_console(driver, server)  # the playground says it of the selected pair
    Select(driver.find_element(By.ID, "try-language")).select_by_value("pcm")
    Select(driver.find_element(By.ID, "try-task")).select_by_value("nli")
    assert driver.find_element(By.ID, "try-about").text == f"nli: {SHOWN['nli']}; Nigerian Pidgin (pcm): {SHOWN['pcm']}"
    open_console(driver, server, "admin", token=TOKEN)  # and the deployed list, per diff
    wait(driver, EC.presence_of_element_located((By.ID, "diff-table")))
    ids = {(d["kind"], d["key"]): d["id"] for d in
           httpx.get(f"{server}/v1/admin/diffs", headers={"Authorization": f"Bearer {TOKEN}"}).json()["diffs"]}

    def row(kind, key):
        return driver.find_element(CSS, f"#diff-table tr[data-id='{ids[(kind, key)]}']")

    assert row("task", "ner").find_element(CSS, "td.source").text == "Hausa (hau)"
    assert row("task", "ner").find_element(CSS, "td.dev").text == "dev F1 0.812 (hau)"
    assert row("language", "pcm").find_element(CSS, "td.dev").text == "dev perplexity 12.2"
    assert row("task", "qa").find_element(CSS, "td.source").text == "English (en)"
    assert row("language", "pcm").find_element(CSS, "td.source").text == ""  # a language diff has no source
    assert row("task", "qa").find_element(CSS, "td.dev").text == ""


def test_matrix_marks_pairs_that_cannot_answer(server, driver):
    open_console(driver, server, "matrix")
    wait(driver, EC.presence_of_element_located((By.ID, "matrix-grid")))
    # no language and no task: nothing to run; a language without an MLM head cannot run alone
    for language in ("", "wol"):
        alone = driver.find_element(CSS, f"tr[data-language='{language}'] td:last-child")
        assert "off" in alone.get_attribute("class") and not alone.find_elements(CSS, "button")
    assert driver.find_elements(CSS, "button[data-language=wol][data-task=ner]")
    assert driver.find_elements(CSS, "button[data-language=hau][data-task='']")
    assert "Wolof (wol)" in driver.find_element(CSS, "tr[data-language=wol] th").text


def test_a_pair_that_cannot_answer_is_not_run(server, driver):
    open_console(driver, server)
    Select(driver.find_element(By.ID, "try-language")).select_by_value("wol")
    Select(driver.find_element(By.ID, "try-task")).select_by_value("")
    assert not driver.find_element(By.ID, "try-run").is_enabled()
    assert "no MLM head" in driver.find_element(By.ID, "try-hint").text


def test_refused_upload_is_said_in_words_with_the_servers_detail(server, driver, tmp_path_factory):
    garbage = b"this is not a safetensors diff" * 4
    other_base = make_base_dir(tmp_path_factory.mktemp("other") / "base", seed=7)
    wrong_base = make_diffs(other_base, languages=["hau"], tasks={})[("language", "hau")]
    reasons = [upload(server, TOKEN, "x", data).json()["detail"] for data in (garbage, wrong_base)]
    open_console(driver, server, "admin", token=TOKEN)
    wait(driver, EC.presence_of_element_located((By.ID, "diff-table")))
    # the drop path, as a person dragging a file would trigger it
    driver.execute_script("""
        const file = new File([new Uint8Array(arguments[0])], 'garbage.safetensors');
        const data = new DataTransfer(); data.items.add(file);
        document.getElementById('upload-zone').dispatchEvent(
          new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));""", list(garbage))
    # in words first; the server's detail (a header byte count here) smaller, below
    wait(driver, EC.text_to_be_present_in_element((By.ID, "upload-detail"), reasons[0]))
    assert reasons[0].startswith("header_too_large: ")
    message = driver.find_element(By.ID, "upload-message")
    assert message.text.splitlines()[0] == "This file is not a safetensors diff."
    assert "muted" in driver.find_element(By.ID, "upload-detail").get_attribute("class")
    path = tmp_path_factory.mktemp("wrong") / "hau.safetensors"
    path.write_bytes(wrong_base)
    driver.find_element(By.ID, "upload-file").send_keys(str(path))
    wait(driver, EC.text_to_be_present_in_element((By.ID, "upload-detail"), reasons[1]))
    assert reasons[1].startswith("fingerprint_mismatch: ")
    assert message.text.splitlines()[0] == "This diff was made for a different base model, not the one this server runs."
    assert "error" in message.get_attribute("class")


def test_admin_controls_are_absent_without_a_token(server, driver):
    open_console(driver, server, "admin")
    wait(driver, EC.visibility_of_element_located((By.ID, "admin-login")))
    for element_id in ("upload-zone", "upload-file", "diff-list", "admin-signout"):
        assert not driver.find_elements(By.ID, element_id), element_id
    sign_in(driver, "not-the-token")
    assert text_of(driver, "admin-login-error") == "wrong admin token"
    assert not driver.find_elements(By.ID, "upload-zone")
    assert driver.execute_script("return sessionStorage.getItem('csft-admin-token')") is None
    assert TOKEN not in driver.current_url


def test_retire_from_the_page_and_sign_out(server, driver, tiny_diffs):
    entry = upload(server, TOKEN, "ibo", tiny_diffs[("language", "ibo")]).json()
    open_console(driver, server, "admin", token=TOKEN)
    button = wait(driver, EC.element_to_be_clickable((CSS, f"#diff-table button.danger[data-id='{entry['id']}']")))
    button.click()
    assert button.text == "Confirm retiring v1"
    button.click()
    wait(driver, EC.invisibility_of_element_located((CSS, f"#diff-table tr[data-id='{entry['id']}']")))
    assert "ibo" not in httpx.get(f"{server}/v1/languages").json()["languages"]
    driver.find_element(By.ID, "admin-signout").click()
    assert not driver.find_elements(By.ID, "upload-zone")
    assert driver.execute_script("return sessionStorage.getItem('csft-admin-token')") is None


def test_live_status_shows_model_and_rates(server, driver):
    open_console(driver, server, "status")
    wait(driver, EC.presence_of_element_located((By.ID, "status-requests")))
    text = driver.find_element(By.ID, "status-list").text
    assert "cpu" in text and "float32" in text and "tiny-bert" in text
    assert "Demo" in text and "off:" in text  # the tiny base has no demo, and the status says why
    # the second poll turns totals into rates
    wait(driver, EC.text_to_be_present_in_element((By.ID, "status-requests"), "/s"))


def test_screenshots(server, driver, tiny_diffs):
    """Writes docs/console-*.png when CSFT_CONSOLE_SCREENSHOTS names a folder."""
    folder = os.environ.get("CSFT_CONSOLE_SCREENSHOTS")
    if not folder:
        pytest.skip("set CSFT_CONSOLE_SCREENSHOTS=docs to write the README's screenshots")
    out = Path(folder)
    open_console(driver, server)
    run_pair(driver, "hau", "ner", text="john  visited kano,\nwith mary.")
    driver.save_screenshot(str(out / "console-playground.png"))
    open_console(driver, server, "matrix")
    wait(driver, EC.presence_of_element_located((By.ID, "matrix-grid")))
    driver.save_screenshot(str(out / "console-matrix.png"))
    open_console(driver, server, "admin", token=TOKEN)
    wait(driver, EC.presence_of_element_located((By.ID, "diff-table")))
    driver.save_screenshot(str(out / "console-admin.png"))
    open_console(driver, server, "status")
    wait(driver, EC.presence_of_element_located((By.ID, "status-requests")))
    for i in range(12):  # some traffic across pairs, so the rates between two polls are not zero
        pair = [("hau", "ner", "john went to kano"), ("swa", "nli", "mary said")][i % 2]
        httpx.post(f"{server}/v1/predict", json={"language": pair[0], "task": pair[1], "inputs": [pair[2]]})
    wait(driver, lambda d: not d.find_element(By.ID, "status-switches").text.startswith(("0.00", "…")))
    driver.save_screenshot(str(out / "console-status.png"))
