"""The app in a real browser: `streamlit run serve.py` as a subprocess on the tiny model, every page
opened in Debian's Chromium through Playwright, a text uploaded, a SPAP run, a sweep, a scan and a
latency measurement driven to completion. Any `stException` element fails the test; a screenshot of
each page is kept under test-artifacts/screenshots/ for a human to look at."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import REPO, tiny_llama, tiny_tokenizer, word_text

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason="Debian's chromium is not installed (apt-get install -y chromium)")

SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
STARTUP_GUARD_S = 120
JOB_GUARD_MS = 300_000  # turns a hung job into a failure; never a performance threshold
CANCEL_GUARD_MS = 60_000  # the worker checks for cancellation between solver steps
VIEWPORT = {"width": 1500, "height": 1000}
NAV_TITLES = {"start_here": "Start here", "model_data": "Model & data", "run_spap": "Run SPAP",
              "mask_evolution": "Mask evolution", "scores": "Scores", "dense_vs_pruned": "Dense vs pruned text",
              "latency": "Latency & memory", "zeroshot": "Zero-shot accuracy",
              "perplexity_sweep": "Perplexity vs sparsity",
              "compare_runs": "Compare runs", "sensitivity": "Sensitivity", "how_spap_works": "How SPAP works"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("browser")
    tiny_llama().save_pretrained(folder / "tiny-llama", safe_serialization=True)
    tiny_tokenizer().save_pretrained(folder / "tiny-llama")
    (folder / "calibration.txt").write_text(word_text(5000, seed=1))
    (folder / "eval-upload.txt").write_text(word_text(3000, seed=2))
    return {"folder": folder, "model": folder / "tiny-llama", "calibration": folder / "calibration.txt",
            "upload": folder / "eval-upload.txt"}


@contextmanager
def serving(files: dict[str, Path], **settings: str) -> Iterator[str]:
    """`streamlit run serve.py` (app.py's pages behind the session cookie middleware) on a free port
    (with `settings` as environment variables); yields its base URL and stops it afterwards."""
    port = free_port()
    env = {**os.environ, "SPAP_APP_MODEL": str(files["model"]), "SPAP_CALIB_FILE": str(files["calibration"]),
           "SPAP_EVAL_FILE": str(files["calibration"]), "SPAP_CACHE_DIR": str(files["folder"] / "cache"),
           "HF_HUB_OFFLINE": "1", **settings}
    log_path = files["folder"] / f"streamlit-{port}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "serve.py", "--server.port", str(port),
             "--server.address", "127.0.0.1"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_GUARD_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"streamlit exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not become healthy:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(files) -> Iterator[str]:
    """The app served for the whole module."""
    with serving(files) as base:
        yield base


@pytest.fixture(scope="module")
def browser(server):
    """One Chromium for the module (Playwright's sync API allows one running instance per thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def browser_page(browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(120_000)
    return page


def settle(page) -> None:
    """Wait until the app has drawn the page and no script run is in flight."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_timeout(500)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')")
    page.wait_for_timeout(300)


def assert_no_errors(page) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.first.inner_text()


def screenshot(page, name: str) -> None:
    """The whole page: streamlit scrolls inside its main block, so the viewport is stretched to fit
    it (which also makes lazily drawn elements render) before the picture is taken."""
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(max(height, VIEWPORT["height"]), 8000)})
    page.wait_for_function("document.querySelectorAll('[data-testid=\"stSkeleton\"]').length === 0")
    page.wait_for_timeout(800)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    page.set_viewport_size(VIEWPORT)


def go_to(page, page_key: str) -> None:
    page.locator('[data-testid="stSidebarNavLink"]', has_text=NAV_TITLES[page_key]).click()
    page.locator("h1", has_text=NAV_TITLES[page_key]).wait_for()
    settle(page)
    assert_no_errors(page)


def slider_value(page, label: str) -> str:
    return page.locator(f'[data-testid="stSlider"] input[type=range][aria-label="{label}"]').input_value()


def test_shared_link_fills_in_the_run_form(browser_page, server):
    page = browser_page
    page.goto(f"{server}/run_spap?sparsity=0.4&K=12&am_rounds=1&am_steps=5")
    settle(page)
    assert_no_errors(page)
    assert slider_value(page, "Sparsity") == "0.4"
    assert slider_value(page, "K: ρ iterations") == "12"
    assert slider_value(page, "Rounds") == "1"
    screenshot(page, "00_run_spap_from_shared_link")


TRAP = "127.0.0.1:9"  # the address a hostile text points at: nothing may link to it or ask it for anything
HOSTILE_FILE = ("[LOGIN-HERE](http://127.0.0.1:9/x) ![b](http://127.0.0.1:9/beacon.png) "
                "<img src=http://127.0.0.1:9/i>.txt")
HOSTILE_VISITS = ["/?run=[CLICKME](http://127.0.0.1:9/phish)", "/?run=![i](http://127.0.0.1:9/track.png)",
                  "/run_spap?sparsity=0.3%60%5D%28http%3A//127.0.0.1:9/q%29%20%5BC&K=4&K=6",
                  "/run_spap?%5Bk%5D(http://127.0.0.1:9/k)=1"]


def made_from_the_trap(page) -> list[str]:
    """Links and images on the page that lead to the trap address (none may exist)."""
    return page.eval_on_selector_all(f'a[href*="{TRAP}"], img[src*="{TRAP}"]', "els => els.map(e => e.outerHTML)")


def test_text_a_user_controls_makes_no_link_image_or_request(server, browser):
    """Markdown and HTML in a shared run's name, in link keys and values (a backtick included) and in
    an uploaded file's name show as typed: no link or image is made from them and the browser never
    asks the trap address for anything; a repeated link key is named with the other ignored ones."""
    context = browser.new_context(viewport=VIEWPORT)
    trapped = []
    context.on("request", lambda request: trapped.append(request.url) if urlsplit(request.url).netloc == TRAP else None)
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        for visit in HOSTILE_VISITS:
            page.goto(server + visit)
            settle(page)
            assert made_from_the_trap(page) == [], visit
        page.goto(server + HOSTILE_VISITS[2])
        settle(page)
        ignored = page.locator('[data-testid="stAlertContentWarning"]', has_text="partly ignored").inner_text()
        ignored = ignored.replace("\u2060", "")  # the invisible joiner that keeps an address from being linked
        assert slider_value(page, "K: ρ iterations") not in ("4", "6")  # the repeated key seeded nothing
        assert "K: given 2 times (4, 6)" in ignored and "sparsity = 0.3`](http://127.0.0.1:9/q) [C" in ignored
        go_to(page, "model_data")
        page.get_by_text("Upload a .txt").first.click()  # the calibration column's radio
        settle(page)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
            files=[{"name": HOSTILE_FILE, "mimeType": "text/plain", "buffer": " ".join(["w1 w2 w3"] * 3000).encode()}])
        page.get_by_text("[LOGIN-").first.wait_for()  # the uploader shows the name shortened
        page.get_by_role("button", name="Use this data").click()
        settle(page)
        page.get_by_text("Data updated").wait_for()
        assert made_from_the_trap(page) == []
        go_to(page, "run_spap")
        page.get_by_text("uploaded file [LOGIN-HERE]", exact=False).first.wait_for()
        assert made_from_the_trap(page) == []
        assert trapped == []
    finally:
        context.close()


def test_the_session_cookie_is_issued_by_the_server_httponly_and_samesite(server, browser):
    """The id comes from the server with the page: HttpOnly (no script reads it) and SameSite=Lax;
    a cookie the server never issued is replaced, never adopted."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(server)
        settle(page)
        [cookie] = [c for c in context.cookies() if c["name"] == "spap_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert "spap_session" not in page.evaluate("document.cookie")
        forged = "0" * 24
        context.clear_cookies()
        context.add_cookies([{"name": "spap_session", "value": forged, "url": server}])
        page.reload()
        settle(page)
        [replaced] = [c for c in context.cookies() if c["name"] == "spap_session"]
        assert replaced["value"] != forged and replaced["httpOnly"]
    finally:
        context.close()


def test_start_page_leads_into_the_lesson_path(browser_page, server):
    page = browser_page
    page.goto(server)
    settle(page)
    page.locator("h1", has_text="SPAP Explorer").wait_for()
    assert_no_errors(page)
    page.get_by_role("link", name="1. How SPAP works").click()
    page.locator("h1", has_text="How SPAP works").wait_for()
    settle(page)
    assert_no_errors(page)


def test_model_and_data_page_with_an_uploaded_text(browser_page, files):
    page = browser_page
    go_to(page, "model_data")
    page.get_by_text("Upload a .txt").nth(1).click()  # the evaluation column's radio
    settle(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(files["upload"]))
    page.get_by_text(files["upload"].name).first.wait_for()
    page.get_by_role("button", name="Use this data").click()
    settle(page)
    page.get_by_text("Data updated").wait_for()
    # the summary re-renders after the confirmation: wait for it rather than sample it once
    page.get_by_text(f"uploaded file {files['upload'].name}").first.wait_for()
    assert_no_errors(page)
    screenshot(page, "01_model_data")


def test_run_spap_to_completion(browser_page):
    page = browser_page
    go_to(page, "run_spap")
    page.get_by_role("button", name="Run SPAP").click()
    page.get_by_text("Latest result").wait_for(timeout=JOB_GUARD_MS)
    settle(page)
    assert_no_errors(page)
    assert page.get_by_text("Perplexity, pruned").count() == 1
    assert page.get_by_text("uploaded file").count() >= 1  # evaluated on the uploaded text
    screenshot(page, "02_run_spap")


def test_inspection_pages_show_the_run(browser_page):
    page = browser_page
    for number, page_key in ((3, "mask_evolution"), (4, "scores")):
        go_to(page, page_key)
        assert page.locator(".js-plotly-plot").count() >= 2
        screenshot(page, f"0{number}_{page_key}")


def test_dense_and_pruned_models_write_side_by_side(browser_page):
    page = browser_page
    go_to(page, "dense_vs_pruned")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("tokens/s").first.wait_for(timeout=JOB_GUARD_MS)
    settle(page)
    assert_no_errors(page)
    answers = page.locator('[data-testid="stText"]')
    assert answers.count() == 2 and all(answers.nth(i).inner_text().strip() for i in range(2))
    screenshot(page, "05_dense_vs_pruned")


def test_background_jobs_of_the_other_pages_complete(browser_page):
    page = browser_page
    jobs = [("perplexity_sweep", "Run sweep", "Perplexity vs sparsity (", 5),
            ("latency", "Measure", "Memory and compute", 6), ("sensitivity", "Run scan", "Red dotted line", 8)]
    for page_key, button, finished_text, number in jobs:
        go_to(page, page_key)
        page.get_by_role("button", name=button).click()
        page.get_by_text(finished_text).first.wait_for(timeout=JOB_GUARD_MS)
        settle(page)
        assert_no_errors(page)
        assert page.locator(".js-plotly-plot").count() >= 1
        screenshot(page, f"0{number}_{page_key}")


def test_how_spap_works_page(browser_page):
    page = browser_page
    go_to(page, "how_spap_works")
    page.get_by_text("SPAP vs the exact optimum").wait_for()
    assert page.locator(".js-plotly-plot").count() == 3  # the path against ρ, the read-out, objective/violation
    page.get_by_role("button", name="SPAP misses it (correlated channels)").click()
    settle(page)
    assert_no_errors(page)
    page.get_by_text("not optimal here").first.wait_for()
    screenshot(page, "07_how_spap_works")


def test_three_sessions_at_once_are_queued_and_each_gets_its_own_result(server, files, browser):
    """Three browser sessions start runs together: the later ones show as queued, all finish, each
    shows the perplexity of the same run done alone, and a refresh keeps the finished runs."""
    from spap_core.data.texts import calibration_windows, evaluation_windows, text_from_file
    from spap_core.methods.registry import PruneSettings
    from spap_core.models.loading import load_model
    from spap_core.pipeline.experiment import run_experiment
    from spap_core.pipeline.parameters import with_values
    from spap_service.presets import CPU_RUN

    sparsities = (0.2, 0.3, 0.4)
    # alternating minimization makes each run last seconds even on the tiny model, so the queue shows
    query = "K=4&am_rounds=3&am_steps=150"
    contexts = [browser.new_context(viewport=VIEWPORT) for _ in sparsities]  # separate sessions
    try:
        pages = [context.new_page() for context in contexts]
        for page, sparsity in zip(pages, sparsities):
            page.set_default_timeout(120_000)
            page.goto(f"{server}/run_spap?sparsity={sparsity}&{query}")
            settle(page)
        for page in pages:
            page.get_by_role("button", name="Run SPAP").click()
        pages[-1].get_by_text("Queued").first.wait_for()
        shown = []
        for page in pages:
            page.get_by_text("Latest result").wait_for(timeout=JOB_GUARD_MS)
            settle(page)
            assert_no_errors(page)
            values = {label: page.locator('[data-testid="stMetric"]', has_text=label)
                      .locator('[data-testid="stMetricValue"]').inner_text()
                      for label in ("Perplexity, dense", "Perplexity, pruned")}
            shown.append(values)
        pages[0].reload()  # the same browser: its run and its result are still there
        settle(pages[0])
        pages[0].get_by_text("Latest result: spap at 20%").wait_for()
        # the weights are still kept: the download is drawn further down the same script run, so it is
        # awaited (a loaded machine may not have drawn it yet when the header shows)
        pages[0].get_by_role("button", name="Pruned model (.zip)").wait_for()
        settle(pages[0])
        assert pages[0].get_by_role("button", name="Pruned model (.zip)").count() == 1
        assert saved_run_count(pages[0]) == 1
        assert saved_run_count(pages[0], every_session=True) >= len(sparsities)
    finally:
        for context in contexts:
            context.close()

    loaded = load_model(str(files["model"]))
    text = text_from_file(files["calibration"])
    calibration = calibration_windows(loaded.tokenizer, text, CPU_RUN.nsamples, CPU_RUN.seqlen, 0)
    evaluation = evaluation_windows(loaded.tokenizer, text, CPU_RUN.eval_len, CPU_RUN.eval_windows)
    for sparsity, values in zip(sparsities, shown):
        settings = with_values(PruneSettings(sparsity=sparsity), {"K": 4, "am_rounds": 3, "am_steps": 150})
        alone = run_experiment(loaded, calibration, evaluation, settings, batch_size=CPU_RUN.batch_size)
        assert values["Perplexity, dense"] == f"{alone.dense.perplexity:.2f}"
        assert values["Perplexity, pruned"] == f"{alone.pruned.perplexity:.2f}"


def saved_run_count(page, every_session: bool = False) -> int:
    """The count in "Saved runs (N of this browser session): …", or of every session's runs (the
    toggle is switched on first; a fresh page load starts with it off)."""
    heading = page.get_by_text("Saved runs (").first
    if every_session and "every session)" not in heading.inner_text():
        heading.click()
        page.get_by_text("Show the runs of every session").click()
        page.get_by_text("of every session)").first.wait_for()
        settle(page)
    text = page.get_by_text("Saved runs (").first.inner_text()
    return int(text.split("(", 1)[1].split()[0])


def test_cancel_ends_a_run_and_a_refresh_keeps_the_finished_runs(server, browser):
    """Cancel ends a long run (the guard only turns a hang into a failure) and the next run works;
    a reload in the middle of a run reattaches to it (progress and Cancel), and its result appears
    in the reloaded page and among this browser's saved runs."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        long_run = f"{server}/run_spap?sparsity=0.3&K=4&am_rounds=10&am_steps=200"
        page.goto(long_run)
        settle(page)
        saved_before = saved_run_count(page)
        page.get_by_role("button", name="Run SPAP").click()
        page.get_by_role("button", name="Cancel").click()
        page.get_by_text("was cancelled").wait_for(timeout=CANCEL_GUARD_MS)
        assert_no_errors(page)

        page.goto(f"{server}/run_spap?sparsity=0.3&K=4")
        settle(page)
        page.get_by_role("button", name="Run SPAP").click()
        page.get_by_text("Latest result").wait_for(timeout=JOB_GUARD_MS)
        settle(page)
        assert_no_errors(page)
        assert saved_run_count(page) == saved_before + 1  # the cancelled run is not saved

        page.goto(f"{server}/run_spap?sparsity=0.4&K=4&am_rounds=3&am_steps=150")
        settle(page)
        mine_before = saved_run_count(page)
        page.get_by_role("button", name="Run SPAP").click()
        page.get_by_role("button", name="Cancel").wait_for()
        page.reload()  # the same browser: the running job is this page's again
        page.locator('[data-testid="stApp"]').wait_for()
        page.get_by_role("button", name="Cancel").wait_for()
        assert page.get_by_text("(yours)").count() >= 1 and page.get_by_text("(another session)").count() == 0
        page.get_by_text("Latest result: spap at 40%").wait_for(timeout=JOB_GUARD_MS)  # this run's, not the last one's
        settle(page)
        assert_no_errors(page)
        assert saved_run_count(page) == mine_before + 1
        with page.expect_download() as download:  # named after the run
            page.get_by_role("button", name="Metrics (.json)").click()
        assert download.value.suggested_filename.startswith("spap-run-") and "spap-0.40" in \
            download.value.suggested_filename
    finally:
        context.close()


def test_a_browser_s_job_limit_holds_across_its_tabs(files, browser):
    """With one job per browser allowed, a second tab of the same browser (the same session cookie)
    cannot queue a sweep while the first tab's run is going; another browser can."""
    with serving(files, SPAP_MAX_JOBS_PER_SESSION="1") as base:
        mine, other = browser.new_context(viewport=VIEWPORT), browser.new_context(viewport=VIEWPORT)
        try:
            first, second = mine.new_page(), mine.new_page()
            for page in (first, second):
                page.set_default_timeout(120_000)
            first.goto(f"{base}/run_spap?sparsity=0.3&K=4&am_rounds=10&am_steps=200")
            settle(first)
            first.get_by_role("button", name="Run SPAP").click()
            first.get_by_role("button", name="Cancel").wait_for()
            second.goto(f"{base}/perplexity_sweep")
            settle(second)
            second.get_by_role("button", name="Run sweep").click()
            second.get_by_text("This server runs at most 1 job per browser session at a time").wait_for()
            stranger = other.new_page()
            stranger.set_default_timeout(120_000)
            stranger.goto(f"{base}/perplexity_sweep")
            settle(stranger)
            stranger.get_by_role("button", name="Run sweep").click()
            swept = stranger.get_by_text("Perplexity vs sparsity (")
            stranger.get_by_text("sessions take turns").or_(swept).first.wait_for()
            assert_no_errors(stranger)
            first.get_by_role("button", name="Cancel").click()
            first.get_by_text("was cancelled").wait_for(timeout=CANCEL_GUARD_MS)
        finally:
            mine.close()
            other.close()


def test_first_visitors_of_a_cold_server_all_get_the_full_app(files, browser):
    """Several first visits that open page URLs at once on a fresh server (Streamlit then runs the
    page files on their own, without app.py): each still gets its page with the router's sidebar."""
    targets = ["run_spap", "scores", "model_data"]
    with serving(files) as base:
        contexts = [browser.new_context(viewport=VIEWPORT) for _ in targets]
        try:
            pages = [context.new_page() for context in contexts]
            for page, key in zip(pages, targets):
                page.set_default_timeout(120_000)
                page.goto(f"{base}/{key}", wait_until="commit")  # all three load at once
            for page, key in zip(pages, targets):
                page.locator("h1", has_text=NAV_TITLES[key]).wait_for()
                settle(page)
                assert_no_errors(page)
                assert page.locator('[data-testid="stSidebarNavLink"]').count() == len(NAV_TITLES)
        finally:
            for context in contexts:
                context.close()


def test_a_gpt2_model_runs_the_default_spap_run_and_every_page_renders(files, browser):
    """A family of the adapters beyond Llama's, end to end in the browser: a tiny GPT-2 folder (plain
    MLP, Conv1D projections, a native c_proj bias) is the app's model; the default SPAP run finishes
    and every page draws without an error."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = files["folder"] / "tiny-gpt2"
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=128, vocab_size=203, n_positions=256,
                        bos_token_id=1, eos_token_id=2)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer().save_pretrained(folder)
    with serving({**files, "model": folder}) as base:
        context = browser.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"{base}/model_data")
            page.locator("h1", has_text=NAV_TITLES["model_data"]).wait_for()
            settle(page)
            assert_no_errors(page)
            page.get_by_text("plain: act(c_fc·x) → c_proj").first.wait_for()
            go_to(page, "run_spap")
            page.get_by_role("button", name="Run SPAP").click()
            page.get_by_text("Latest result").wait_for(timeout=JOB_GUARD_MS)
            settle(page)
            assert_no_errors(page)
            screenshot(page, "gpt2_run_spap")
            for key in NAV_TITLES:
                if key != "start_here":  # its heading is the app's name, opened below
                    go_to(page, key)
            page.locator('[data-testid="stSidebarNavLink"]', has_text=NAV_TITLES["start_here"]).click()
            page.locator("h1", has_text="SPAP Explorer").wait_for()
            settle(page)
            assert_no_errors(page)
        finally:
            context.close()


PROJECTOR = {"width": 853, "height": 480}  # a 1280 × 720 screen at 150% zoom, in CSS pixels
LAYOUT_CHECK = """() => {
  const problems = [];
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    const box = plot.getBoundingClientRect();
    const texts = [...plot.querySelectorAll('.annotation-text, .g-xtitle text, .g-ytitle text, .legendtext')]
      .map(t => [t.textContent, t.getBoundingClientRect()]).filter(([, r]) => r.width > 0);
    for (const [text, r] of texts)
      if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 || r.bottom > box.bottom + 1)
        problems.push('cut off: ' + text.slice(0, 60));
    for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
      const [a, b] = [texts[i][1], texts[j][1]];
      if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1)
        problems.push('overlap: ' + texts[i][0].slice(0, 40) + ' / ' + texts[j][0].slice(0, 40));
    }
  }
  return problems;
}"""


def test_every_page_holds_on_a_projector_in_both_modes(server, browser):
    """At 1280 × 720 and 150% zoom, after a run and a latency measurement: on every page no chart's
    subplot, axis or legend text is cut off by its chart or overlaps another, with normal fonts and
    in presentation mode (whose larger fonts reach the charts too); the sidebar folds away."""
    context = browser.new_context(viewport=PROJECTOR, device_scale_factor=1.5)
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"{server}/run_spap?sparsity=0.3&K=5")
        settle(page)
        page.get_by_role("button", name="Run SPAP").click()
        page.get_by_text("Latest result: spap at 30%").wait_for(timeout=JOB_GUARD_MS)
        go_to(page, "latency")
        page.get_by_role("button", name="Measure").click()
        page.get_by_text("Measured speed-ups").first.wait_for(timeout=JOB_GUARD_MS)
        for mode in ("normal", "presentation"):
            if mode == "presentation":
                page.get_by_text("Presentation mode").click()
                settle(page)
            for key in NAV_TITLES:
                page.goto(f"{server}/{'' if key == 'start_here' else key}")
                settle(page)
                assert_no_errors(page)
                height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
                page.set_viewport_size({"width": PROJECTOR["width"], "height": min(max(height, 480), 8000)})
                page.wait_for_timeout(800)  # every chart drawn at the final width
                assert page.evaluate(LAYOUT_CHECK) == [], (mode, key)
                if mode == "presentation":
                    page.screenshot(path=str(SCREENSHOTS / f"projector_{key}.png"))
                page.set_viewport_size(PROJECTOR)
        font = page.evaluate("getComputedStyle(document.querySelector('[data-testid=\"stCaptionContainer\"] p'))"
                             ".fontSize")
        assert float(font.removesuffix("px")) >= 16  # presentation mode's captions
        # presentation mode folded the sidebar as the page opened
        page.locator('[data-testid="stSidebar"][data-collapsed="true"]').wait_for(state="attached")
    finally:
        context.close()
