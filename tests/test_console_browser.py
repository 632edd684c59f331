"""The web console in a real headless Chromium against a real `csft serve` with a tiny base:
entities render, an upload through the page reaches the matrix, a refusal is shown in the
server's words, admin controls need a token. Skips when Chromium is absent.

``CSFT_CONSOLE_SCREENSHOTS=docs python -m pytest tests/test_console_browser.py`` also writes
docs/console-*.png (the README's screenshots)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

import console_browser
from diffs_store.base import load_base_model
from diffs_store.metadata import DiffKind
from factories import random_diff
from console_browser import open_console, wait
from service_fixtures import make_base_dir, make_diffs, running_server, upload

if console_browser.missing():
    pytest.skip(console_browser.missing(), allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

TOKEN = "console-token"
PRELOADED = [("language", "hau"), ("language", "swa"), ("language", "pcm"),
             ("task", "ner"), ("task", "nli"), ("task", "qa"), ("task", "pos")]
CSS = By.CSS_SELECTOR


@pytest.fixture(scope="module")
def server(tiny_base_dir, tiny_diffs, tmp_path_factory):
    with running_server(tiny_base_dir, tmp_path_factory.mktemp("console-data"), TOKEN, TORCH_THREADS="1") as url:
        for kind, key in PRELOADED:
            assert upload(url, TOKEN, key, tiny_diffs[(kind, key)]).status_code == 201
        assert upload(url, TOKEN, "wol", headless_language(tiny_base_dir, "wol")).status_code == 201
        yield url


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


def test_prediction_renders_highlighted_entities(server, driver):
    candidates = ["john visited kano yesterday", "mary lives in lagos and works at the bank",
                  "the president went to abuja with john", "google said the city market is new"]
    api = [httpx.post(f"{server}/v1/predict", json={"language": "hau", "task": "ner", "inputs": [text]}).json()
           for text in candidates]
    text, answer = next((t, a) for t, a in zip(candidates, api) if a["predictions"][0]["entities"])
    open_console(driver, server)
    run_pair(driver, "hau", "ner", text=text)
    marks = driver.find_elements(CSS, "#try-result mark.entity")
    entities = answer["predictions"][0]["entities"]
    assert [m.get_attribute("data-type") for m in marks] == [e["type"] for e in entities]
    assert [m.find_element(CSS, ".entity-text").text for m in marks] == [e["text"] for e in entities]
    assert all(m.find_element(CSS, ".entity-label").text.startswith(e["type"] + " 0.") or
               m.find_element(CSS, ".entity-label").text.startswith(e["type"] + " 1.") for m, e in zip(marks, entities))
    meta = driver.find_element(CSS, "#try-result .result-meta").text
    for kind, diff in answer["diffs"].items():
        assert f"{kind} v{diff['version']} {diff['id'][:12]}" in meta
    assert "Hausa (hau)" in meta and driver.find_element(By.ID, "try-time").text.endswith(" ms")


@pytest.mark.parametrize(("language", "task", "selector", "count"), [
    ("swa", "nli", "#try-result .bar-row", 3),  # one bar per label
    ("pcm", "", "#try-result .bar-row", 5),  # fill-mask: top 5 tokens
])
def test_bars_for_classification_and_fill_mask(server, driver, language, task, selector, count):
    open_console(driver, server)
    run_pair(driver, language, task)  # the prefilled example, as a first visit would
    assert len(driver.find_elements(CSS, selector)) == count
    assert driver.find_element(CSS, "#try-result .bar-row.top .bar-label").text


def test_question_answering_marks_the_span(server, driver):
    context = "mary lives in nairobi and works at the bank"
    answer = httpx.post(f"{server}/v1/predict", json={"language": "swa", "task": "qa",
                        "inputs": [{"question": "where does mary live", "context": context}]}).json()["predictions"][0]
    open_console(driver, server)
    run_pair(driver, "swa", "qa", question="where does mary live", context=context)
    if answer["end"] > answer["start"]:
        assert driver.find_element(CSS, "#try-result mark.answer-span").text == answer["answer"].strip()
        assert driver.find_element(CSS, "#try-result .qa-context").text == context
    else:
        assert "No answer" in driver.find_element(By.ID, "try-result").text


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
    cell.click()
    wait(driver, EC.visibility_of_element_located((By.ID, "playground")))
    assert Select(driver.find_element(By.ID, "try-language")).first_selected_option.get_attribute("value") == "yor"
    assert Select(driver.find_element(By.ID, "try-task")).first_selected_option.get_attribute("value") == "ner"


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


def test_refused_upload_shows_the_servers_reason(server, driver, tmp_path_factory):
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
    wait(driver, EC.text_to_be_present_in_element((By.ID, "upload-message"), reasons[0]))
    assert driver.find_element(By.ID, "upload-message").text == reasons[0]
    path = tmp_path_factory.mktemp("wrong") / "hau.safetensors"
    path.write_bytes(wrong_base)
    driver.find_element(By.ID, "upload-file").send_keys(str(path))
    wait(driver, EC.text_to_be_present_in_element((By.ID, "upload-message"), reasons[1]))
    assert "error" in driver.find_element(By.ID, "upload-message").get_attribute("class")


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
    run_pair(driver, "hau", "ner", text="mary lives in lagos and works at the bank")
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
