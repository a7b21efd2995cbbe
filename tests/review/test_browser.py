"""The reviewer's page in a real browser: Debian's Chromium driven by Playwright against the real
server (uvicorn in a thread) over a tiny harvest. A radiologist opens a volume, scrolls, rejects a
proposal, draws a RECIST mark, marks the volume fully annotated, and undoes a write; the audit
trail must hold exactly what was done. Over a run of two rounds staged by hand (tests/review/staged.py)
the page lists every round's lesions and hard negatives, hides what the harvest set aside, shows one
score with its formula, asks before F, and says who changed a lesion first or drew it already.

Screenshots go to $LH_SCREENSHOTS when set (else the test's tmp folder)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import httpx  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
TOKEN = "browser-test-token"
REVIEWER = "dr-ann"
WAIT_MS = 20_000  # slices are windowed on the fly: a loaded 2-core machine needs a few seconds


def _sync_playwright():
    """Playwright's entry point, or skip: this test never downloads a browser."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium); the API tests still run")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright); the API tests still run")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def playwright_api():
    """Playwright's sync API module; skips (before any harvest is made) where there is no browser."""
    starter = _sync_playwright()
    from playwright import sync_api

    with starter() as playwright:
        yield SimpleNamespace(playwright=playwright, expect=sync_api.expect)


def _serve(run: Path, data: Path, **more):
    """The review server over ``run`` on a free local port, in a thread, until the generator closes."""
    import uvicorn

    from lesion_harvester.review.app import create_app

    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(run, data, token=TOKEN), host="127.0.0.1", port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the review server did not start"
        time.sleep(0.05)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", run=run, data=data, **more)
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(playwright_api, request, tmp_path_factory):
    """The review server over a private copy of the tiny harvest run."""
    data = request.getfixturevalue("tiny_dataset")
    run = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(request.getfixturevalue("tiny_harvest_run"), run)
    yield from _serve(run, data)


@pytest.fixture(scope="module")
def staged_server(playwright_api, request, tmp_path_factory):
    """The review server over a run of two rounds staged by hand (tests/review/staged.py)."""
    from tests.review.staged import staged_run

    staged = staged_run(request.getfixturevalue("tiny_dataset"), tmp_path_factory.mktemp("staged") / "run")
    yield from _serve(staged.run, staged.data, a=staged.a, b=staged.b, holdout=staged.holdout)


@pytest.fixture(scope="module")
def browser(playwright_api):
    browser = playwright_api.playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                       args=LAUNCH_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser, playwright_api):
    """A fresh page, 1400x900, that records the page's JavaScript errors in page.errors."""
    playwright_api.expect.set_options(timeout=WAIT_MS)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and page.errors.append(f"console: {msg.text}"))
    yield page
    context.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("LH_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _api(server, path: str):
    response = httpx.get(server.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    response.raise_for_status()
    return response.json()


def _volume_with_proposals(server) -> str:
    """The first volume of the 'Annotate fully' list that has a proposal."""
    return next(v["key"] for v in _api(server, "/api/worklist")["volumes"] if v["proposals"] > 0)


def _proposal_on_a_mark(server, key: str) -> str:
    """The best-scored proposal whose key slice holds a RECIST mark (a telling screenshot), else the best."""
    volume = _api(server, f"/api/volumes/{key}")
    marked = {m["z_index"] for m in volume["marks"]}
    ranked = sorted(volume["proposals"], key=lambda p: (p["key_z"] in marked, p["s"] or -1), reverse=True)
    return ranked[0]["ref"]


def _open_volume(page, server, expect) -> str:
    """Opens the page, names the reviewer and opens the first volume with a proposal; returns its key."""
    page.goto(f"{server.url}/?token={TOKEN}")
    page.fill("#reviewer", REVIEWER)
    page.press("#reviewer", "Enter")  # leaves the field, so the keys are shortcuts again
    page.click("#tab-volumes")
    key = _volume_with_proposals(server)
    page.click(f'.wl-volume[data-key="{key}"]')
    expect(page.locator("#slice-info")).to_have_text(re.compile(r"^slice \d+ / \d+"))
    expect(page.locator(".proposal-item").first).to_be_visible()
    return key


def _drag(page, start, end):
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=6)
    page.mouse.up()


def test_review_a_volume_in_the_browser(server, page, shots, playwright_api):
    expect = playwright_api.expect
    key = _open_volume(page, server, expect)
    canvas = page.locator("#slice-canvas").bounding_box()
    centre = (canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2)

    # Scroll: Home, two wheel notches and ArrowDown go to the fourth slice (z_index 3; numbered from 1).
    page.mouse.move(*centre)
    page.keyboard.press("Home")
    expect(page.locator("#slice-info")).to_have_text(re.compile(r"^slice 1 / "))
    page.mouse.wheel(0, 120)
    page.mouse.wheel(0, 120)
    page.keyboard.press("ArrowDown")
    expect(page.locator("#slice-info")).to_have_text(
        re.compile(r"^slice 4 / \d+ · .* mm · interval .* mm · L 40 W 400$"))

    # Select a proposal from the list: the viewer jumps to its key slice.
    ref = _proposal_on_a_mark(server, key)
    item = page.locator(f'.proposal-item[data-ref="{ref}"]')
    item.click()
    expect(item).to_have_class(re.compile(r"\bselected\b"))
    expect(page.locator("#selection")).to_contain_text(f"proposal {ref}")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "viewer.png"))

    page.keyboard.press("r")
    expect(page.locator("#status")).to_have_text(f"rejected {ref}")
    expect(item.locator(".verdict")).to_have_text(f"✗ rejected by {REVIEWER}")

    # A RECIST mark: the long axis, then the short one, each a press-drag-release.
    page.keyboard.press("d")
    expect(page.locator("#btn-recist")).to_have_class(re.compile(r"\bactive\b"))
    cx, cy = centre
    _drag(page, (cx - 45, cy - 15), (cx + 45, cy + 15))
    expect(page.locator("#status")).to_have_text("RECIST: now drag the short axis")
    _drag(page, (cx + 8, cy - 24), (cx - 8, cy + 24))  # perpendicular to the long axis
    expect(page.locator("#status")).to_have_text(re.compile(r"^drew d\d+ \(RECIST\) on slice \d+$"))
    expect(page.locator(".drawn-item")).to_have_count(1)
    page.mouse.move(canvas["x"] + 5, canvas["y"] + 5)  # no hover label over the mark
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "recist.png"))

    page.keyboard.press("f")  # proposals without a verdict remain: it asks first
    expect(page.locator("#confirm-text")).to_contain_text(f"of {key} have no verdict")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text(f"marked {key} fully annotated")
    expect(page.locator("#btn-fully")).to_have_class(re.compile(r"\bdone\b"))
    expect(page.locator(f'.wl-volume[data-key="{key}"] .done')).to_have_text(f"✓ {REVIEWER}")

    trail = _api(server, f"/api/verdicts?volume={key}")["verdicts"]
    assert [v["action"] for v in trail] == ["reject", "draw", "fully_annotated"]
    assert {v["reviewer"] for v in trail} == {REVIEWER}
    reject, draw, fully = trail
    assert (reject["kind"], reject["ref"]) == ("proposal", ref)
    assert draw["kind"] == "drawn" and draw["recist"] is not None
    long_axis = draw["recist"]["long_axis_px"]
    assert abs(long_axis[2] - long_axis[0]) > abs(long_axis[3] - long_axis[1]) > 0  # the drag's direction
    assert all(v == round(v, 1) for v in long_axis + draw["recist"]["short_axis_px"])
    assert (fully["kind"], fully["ref"]) == ("volume", "")
    assert page.errors == []

    # The next harvest round uses the three verdicts: the volume counts in V_M, the rejected proposal
    # is among the hard negatives its LPG is fine-tuned with (HNSL).
    _next_round_uses(server, key, reject["ref"])


def _next_round_uses(server, key: str, rejected_ref: str) -> None:
    from lesion_harvester.harvest.ledger import Ledger
    from lesion_harvester.harvest.rounds import harvest
    from lesion_harvester.io.annotations import read_tracklets
    from lesion_harvester.paths import RunLayout
    from tests.conftest import tiny_harvest_preset

    harvest(server.data, server.run, tiny_harvest_preset(2), device="cpu", progress=False,
            cache_dir=server.run.parent / "cache")
    layout = RunLayout(server.run)
    ledger = Ledger(layout.ledger)
    try:
        assert key in ledger.volumes(role="fully_annotated")
        assert ledger.step_info(2, "reviews")["joined_v_m"] == [key]
        assert {row.status for row in ledger.proposals(2, volumes=[key])} <= {"fa_lesion", "fa_negative"}
        rejected = next(row for row in ledger.proposals(1, volumes=[key]) if f"1:{row.idx}" == rejected_ref)
    finally:
        ledger.close()
    negatives = read_tracklets(layout.finetune_negatives(2))[key]
    assert any(np.array_equal(t.z_indices, rejected.tracklet.z_indices)
               and np.array_equal(t.boxes_xyxy_px, rejected.tracklet.boxes_xyxy_px) for t in negatives)


def test_undo_restores_the_state_before_the_write(server, page, playwright_api):
    expect = playwright_api.expect
    key = _open_volume(page, server, expect)
    volume = _api(server, f"/api/volumes/{key}")
    ref = next(p["ref"] for p in reversed(volume["proposals"]) if p["verdict"] is None)
    item = page.locator(f'.proposal-item[data-ref="{ref}"]')
    item.click()
    page.keyboard.press("a")
    expect(page.locator("#status")).to_have_text(f"accepted {ref}")
    page.keyboard.press("Control+z")
    expect(page.locator("#status")).to_have_text(f"undid accept {ref}")
    expect(item.locator(".verdict")).to_have_text(f"cleared by {REVIEWER}")

    mine = [v for v in _api(server, f"/api/verdicts?volume={key}")["verdicts"] if v["ref"] == ref]
    assert [v["action"] for v in mine] == ["accept", "clear"]
    assert mine[1]["replaces"] == mine[0]["id"]
    assert page.errors == []


def _as_bob(server, **body):
    """A verdict by a second reviewer, through the API (the page has not seen it)."""
    answer = httpx.post(server.url + "/api/verdicts", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
                        json={"base": 0, "reviewer": "bob", **body})
    answer.raise_for_status()
    return answer.json()["verdict"]


def _set_min_score(page, value: float) -> None:
    page.eval_on_selector("#min-score", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                          str(value))


def _image_to_screen(page, x: float, y: float) -> tuple[float, float]:
    """Where the centre of image pixel (x, y) is on the screen, at zoom 1 (the page's viewTransform)."""
    return tuple(page.evaluate("([x, y]) => { const c = canvas(), r = c.getBoundingClientRect(); "
                               "const [cx, cy] = toCanvas(viewTransform(), x, y); "
                               "return [r.left + cx * r.width / c.width, r.top + cy * r.height / c.height]; }", [x, y]))


def test_verify_lesions_of_every_round_with_one_score(staged_server, page, shots, playwright_api):
    """Issue 37, item 5, as the radiologist met it: the Verify list, the score filter and labels,
    the question before F, a conflict that says who, and a lesion someone else drew first."""
    expect, server = playwright_api.expect, staged_server
    page.goto(f"{server.url}/?token={TOKEN}")
    page.fill("#reviewer", REVIEWER)
    page.press("#reviewer", "Enter")
    expect(page.locator("#session-info")).to_contain_text("score s = s_g · s_c^w, w 0.5 · threshold 0.500")

    # Every round's harvested lesions (X once, as round 2's), the hard negatives; nothing of the holdout.
    page.click("#tab-lesions")
    expect(page.locator("#lesion-list .wl-lesion")).to_have_count(2)
    expect(page.locator("#lesion-count")).to_have_text("2")
    expect(page.locator("#negative-list .wl-lesion")).to_have_count(2)
    rows = page.locator("#panel-lesions .wl-lesion")
    assert [(rows.nth(i).get_attribute("data-volume"), rows.nth(i).get_attribute("data-ref")) for i in range(4)] == [
        (server.a, "2:0"), (server.b, "1:0"), (server.a, "2:1"), (server.a, "1:1")]
    assert server.holdout not in page.locator("#panel-lesions").inner_text()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "verify.png"))

    # Round 1's hard negative Y opens at its key slice, numbered from 1, with one score and its formula.
    page.click('#negative-list .wl-lesion[data-ref="1:1"]')
    expect(page.locator("#selection")).to_contain_text("proposal 1:1 · round 1 · hard negative")
    expect(page.locator("#selection")).to_contain_text("s = s_g · s_c^w = 0.70 · 0.50^1 = 0.35")
    expect(page.locator("#slice-info")).to_have_text(re.compile(r"^slice 10 / \d+ · "))  # z_index 9
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "hard_negative.png"))

    # What the harvest set aside (2:2, 2:3, 2:4: below round 2's threshold 0.5) is hidden by default,
    # in the list and on the image; the filter brings it back, in words unlike a reviewer's verdict.
    expect(page.locator(".proposal-item")).to_have_count(3)
    expect(page.locator("#proposal-count")).to_have_text(
        "3 of 6 shown; hidden: 3 the harvest set aside, score below 0.50")
    on_slice_2 = "() => { setSlice(1); return sliceShapes().filter((s) => s.target).map((s) => s.label); }"
    assert page.evaluate(on_slice_2) == []
    _set_min_score(page, 0)
    expect(page.locator(".proposal-item")).to_have_count(6)
    assert page.evaluate(on_slice_2) == ["2:2 below threshold · score 0.05"]
    expect(page.locator('.proposal-item[data-ref="2:3"] .status')).to_have_text("below threshold")
    _set_min_score(page, 0.5)

    # A reviewer's reject reads unlike the harvest's status.
    page.click('.proposal-item[data-ref="1:1"]')
    page.keyboard.press("r")
    expect(page.locator("#status")).to_have_text("rejected 1:1")
    expect(page.locator('.proposal-item[data-ref="1:1"] .verdict')).to_have_text(f"✗ rejected by {REVIEWER}")

    # Bob accepts X after this page loaded it: the page's accept says who did what, and that it was not saved.
    _as_bob(server, volume=server.a, kind="proposal", ref="2:0", action="accept")
    page.click('.proposal-item[data-ref="2:0"]')
    page.keyboard.press("a")
    expect(page.locator("#status")).to_have_text(re.compile(
        r"^not saved: bob gave 'accept' on \S+ proposal 2:0 at .*; look again \(shown now\)$"))
    expect(page.locator('.proposal-item[data-ref="2:0"] .verdict')).to_have_text("✓ accepted by bob")
    expect(page.locator("#slice-info")).to_have_text(re.compile(r"^slice 6 / "))  # X's key slice, z_index 5

    # Bob draws a lesion on this slice, unseen; drawing it here is refused with a question.
    theirs = _as_bob(server, volume=server.a, kind="drawn", ref="", action="draw", z_index=5,
                     box_xyxy_px=[60, 20, 80, 40])
    page.keyboard.press("b")
    _drag(page, _image_to_screen(page, 61, 21), _image_to_screen(page, 79, 39))
    expect(page.locator("#confirm-text")).to_have_text(
        f"Your draw was not saved: the lesion {theirs['ref']} that bob drew (slice 6), is this lesion already. "
        "Is it another lesion?")
    page.keyboard.press("Escape")
    expect(page.locator("#confirm")).to_be_hidden()
    drawn = [v for v in _api(server, f"/api/verdicts?volume={server.a}")["verdicts"] if v["kind"] == "drawn"]
    assert [(v["reviewer"], v["ref"]) for v in drawn] == [("bob", theirs["ref"])]
    # ...and saved when the reviewer says it is another lesion
    page.keyboard.press("b")
    _drag(page, _image_to_screen(page, 61, 21), _image_to_screen(page, 79, 39))
    expect(page.locator("#confirm")).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text(re.compile(r"^drew d\d+ \(box\) on slice 6$"))
    expect(page.locator(".drawn-item")).to_have_count(2)

    # F asks while proposals have no verdict (2:1 shown, 2:2-2:4 set aside); Esc saves nothing.
    page.keyboard.press("f")
    expect(page.locator("#confirm-text")).to_have_text(
        f"4 proposals of {server.a} have no verdict (1 shown, 3 set aside by the harvest below score 0.50). "
        "Marked fully annotated, they all count as no lesion. Mark it anyway?")
    page.screenshot(path=str(shots / "question.png"))
    page.keyboard.press("Escape")
    expect(page.locator("#status")).to_have_text("not saved")
    assert not any(v["kind"] == "volume" for v in _api(server, f"/api/verdicts?volume={server.a}")["verdicts"])
    page.keyboard.press("f")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text(f"marked {server.a} fully annotated")

    # A holdout volume (never listed; opened here by hand) is read only: A says so and sends nothing.
    page.evaluate("(key) => openVolume(key)", server.holdout)
    expect(page.locator("#volume-title .holdout")).to_have_text("holdout: read only")
    page.keyboard.press("n")
    page.keyboard.press("a")
    expect(page.locator("#status")).to_have_text(re.compile(r"is a holdout volume: read only"))
    assert _api(server, f"/api/verdicts?volume={server.holdout}")["verdicts"] == []

    trail = _api(server, f"/api/verdicts?volume={server.a}")["verdicts"]
    assert [(v["reviewer"], v["action"], v["ref"]) for v in trail] == [
        (REVIEWER, "reject", "1:1"), ("bob", "accept", "2:0"), ("bob", "draw", theirs["ref"]),
        (REVIEWER, "draw", trail[3]["ref"]), (REVIEWER, "fully_annotated", "")]
    # the browser logs each refused request: the conflict and the two drawings of bob's lesion, nothing else
    refused = [e for e in page.errors if "status of 409" in e]
    assert len(refused) == 3 and len(page.errors) == 3, page.errors
