"""latents.html in a real headless browser (Playwright driving Chromium): the page loads without a
console error, the search filters the index and the cards, sorting reorders the index, and a
latent's card shows its contexts with per-token values and its logit table.

Needs the `playwright` package (dev extra) and a Chromium: REASONDIFF_CHROMIUM, else Debian's
/usr/bin/chromium, else Playwright's own download. Skips, saying which is missing, otherwise."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from reasondiff.analyze.contexts import ActivationHistogram, Example, LatentCard
from reasondiff.analyze.latent_page import render_latents_html

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("REASONDIFF_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[dev]')")
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except Exception as err:  # no browser installed: a capability this machine lacks
            pytest.skip(f"needs a Chromium (apt-get install chromium, or REASONDIFF_CHROMIUM=path): {err}".splitlines()[0])
        yield launched
        launched.close()


def card(latent: int, latent_class: str, r: float, tokens: list[str], promoted: str) -> LatentCard:
    n_bins = len(ActivationHistogram.EDGES) - 1
    histogram = [0] * n_bins
    histogram[30:34] = [3, 9, 5, 1]
    example = Example(tokens=tokens, activations=[0.0, 2.5, 0.75, 0.0][:len(tokens)], peak=1, context=latent * 10)
    return LatentCard(
        latent=latent, latent_class=latent_class,
        facts={"relative_norm": r, "delta_norm": r, "cosine": 0.25, "decoder_norm_base": 1 - r, "decoder_norm_tuned": r,
               "freq_general": 0.01 * latent, "freq_reasoning": 0.02, "nu_error": 0.1},
        examples={"general": [example], "reasoning": [example, example]},
        histograms={"general": histogram, "reasoning": histogram[::-1]},
        logits={m: {"promoted": [(promoted, 0.8), (" so", 0.5)], "suppressed": [(" the", -0.4)]} for m in ("base", "tuned")})


@pytest.fixture
def page_file(tmp_path) -> Path:
    sections = {
        "most tuned-leaning latents (highest relative norm)": [
            card(7, "tuned_only", 0.97, ["Let", " me", " check", "\n"], " Wait"),
            card(12, "tuned_only", 0.93, ['<img src=x onerror="window.__xss=1">', "<b>", "x"], " Hmm")],
        "most base-leaning latents (lowest relative norm)": [card(3, "base_only", 0.02, ["The", " answer", " is"], " is")],
        "shared latents (random sample)": [],
    }
    path = tmp_path / "latents.html"
    path.write_text(render_latents_html(sections, title="test latents", intro="intro"), encoding="utf-8")
    return path


def test_latents_page_in_a_browser(browser, page_file):
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(page_file.as_uri())
    page.wait_for_load_state("load")
    assert problems == []
    assert requests == [page_file.as_uri()]  # nothing else fetched
    assert page.evaluate("() => window.__xss === undefined")  # a token that is HTML stayed text
    assert page.locator("#latent-12 .tok .s").first.inner_text().startswith("<img")

    index_rows = page.locator("table.index tbody tr")
    cards = page.locator("section.card")
    assert index_rows.count() == 3 and cards.count() == 3
    assert page.locator("#count").inner_text() == "3 of 3 latents"

    # search: free text matches the index's fields (class, logit tokens), contexts only when asked;
    # #id picks one latent
    page.fill("#search", "wait")
    assert [c.get_attribute("id") for c in cards.all() if c.is_visible()] == ["latent-7"]
    assert page.locator("#count").inner_text() == "1 of 3 latents"
    page.fill("#search", "check")  # a word of latent 7's context only
    assert page.locator("#count").inner_text() == "0 of 3 latents"
    page.check("#in-contexts")
    assert [c.get_attribute("id") for c in cards.all() if c.is_visible()] == ["latent-7"]
    page.uncheck("#in-contexts")
    page.fill("#search", "#12")
    assert [r.get_attribute("data-latent") for r in index_rows.all() if r.is_visible()] == ["12"]
    page.fill("#search", "base_only")
    assert [c.get_attribute("id") for c in cards.all() if c.is_visible()] == ["latent-3"]
    page.fill("#search", "")
    assert all(c.is_visible() for c in cards.all())

    # sort the index by r, ascending then descending
    page.locator('table.index th[data-key="relative_norm"]').click()
    assert [r.get_attribute("data-latent") for r in index_rows.all()] == ["3", "12", "7"]
    page.locator('table.index th[data-key="relative_norm"]').click()
    assert [r.get_attribute("data-latent") for r in index_rows.all()] == ["7", "12", "3"]

    # a card, reached from the index: its contexts with visible per-token values, its logit tables
    page.locator('table.index a[href="#latent-7"]').click()
    target = page.locator("#latent-7")
    assert target.is_visible()
    general = target.locator('.col[data-text="general"] .ex')
    assert general.count() == 1 and target.locator('.col[data-text="reasoning"] .ex').count() == 2
    values = [v.inner_text() for v in general.first.locator(".tok .v").all()]
    assert values == ["", "2.50", "0.75", ""]  # shown under the tokens, not only on hover
    assert general.first.locator(".tok.peak .s").inner_text() == " me"
    tables = target.locator("table.logit")
    assert tables.count() == 2 and tables.first.is_visible()
    assert "Wait" in tables.first.inner_text() and "+0.800" in tables.first.inner_text()
    assert target.locator(".hist svg rect").count() == 8
    # no token is ever broken across lines: each token's text lays out as one line box
    lines = page.evaluate("""() => [...document.querySelectorAll('.tok .s')].map(el => {
        const range = document.createRange(); range.selectNodeContents(el); return range.getClientRects().length; })""")
    assert lines and set(lines) == {1}
    page.close()


def test_whitespace_tokens_show_escaped_and_search_keeps_to_the_index():
    """Issue 33.6: a space top token was a blank index cell, and the search matched context text."""
    import html
    import re

    from reasondiff.analyze.latent_page import show_token

    assert [show_token(t) for t in (" ", "\n", " the", "\t", "")] == ["␣", "\\n", "␣the", "\\t", "∅"]
    page = render_latents_html({"s": [card(5, "shared", 0.5, ["Let", " me", " check"], " "),
                                      card(6, "shared", 0.5, ["x"], "\n")]}, title="t")
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r'<tr data-latent="(\d+)".*?</tr>', page, re.S)}
    assert '<td class="l" data-value=" ">␣</td>' in rows[5] and '<td class="l" data-value="\n">\\n</td>' in rows[6]
    search = html.unescape(re.search(r'data-search="([^"]*)"', rows[5]).group(1))
    context = html.unescape(re.search(r'data-context="([^"]*)"', rows[5]).group(1))
    assert "check" not in search and "shared" in search and "␣so" in search
    assert "let me check" in context
    assert 'id="in-contexts"' in page and '<td class="tokcell">␣</td>' in page
    assert '<span id="count">2 of 2 latents</span>' in page
