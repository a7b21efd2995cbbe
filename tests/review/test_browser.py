"""The reviewer's page in a real browser: Debian's Chromium driven by Playwright against the real
server (uvicorn in a thread) over a tiny harvest. A radiologist opens a volume, scrolls, rejects a
proposal, draws a RECIST mark, marks the volume fully annotated, and undoes a write; the audit
trail must hold exactly what was done.

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


@pytest.fixture(scope="module")
def server(playwright_api, request, tmp_path_factory):
    """The review server over a private copy of the tiny harvest run, on a free local port."""
    import uvicorn

    from lesion_harvester.review.app import create_app

    data = request.getfixturevalue("tiny_dataset")
    run = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(request.getfixturevalue("tiny_harvest_run"), run)
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(run, data, token=TOKEN), host="127.0.0.1", port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the review server did not start"
        time.sleep(0.05)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", run=run, data=data)
    uv.should_exit = True
    thread.join(timeout=10)


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
    expect(page.locator("#slice-info")).to_have_text(re.compile(r"^z \d+ / \d+"))
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

    # Scroll: Home, two wheel notches and ArrowDown go to slice 3.
    page.mouse.move(*centre)
    page.keyboard.press("Home")
    expect(page.locator("#slice-info")).to_have_text(re.compile(r"^z 0 / "))
    page.mouse.wheel(0, 120)
    page.mouse.wheel(0, 120)
    page.keyboard.press("ArrowDown")
    expect(page.locator("#slice-info")).to_have_text(re.compile(r"^z 3 / \d+ · .* mm · interval .* mm · L 40 W 400$"))

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
    expect(item.locator(".verdict")).to_have_text(f"reject by {REVIEWER}")

    # A RECIST mark: the long axis, then the short one, each a press-drag-release.
    page.keyboard.press("d")
    expect(page.locator("#btn-recist")).to_have_class(re.compile(r"\bactive\b"))
    cx, cy = centre
    _drag(page, (cx - 45, cy - 15), (cx + 45, cy + 15))
    expect(page.locator("#status")).to_have_text("RECIST: now drag the short axis")
    _drag(page, (cx + 8, cy - 24), (cx - 8, cy + 24))  # perpendicular to the long axis
    expect(page.locator("#status")).to_have_text(re.compile(r"^drew d\d+ \(RECIST\) on z \d+$"))
    expect(page.locator(".drawn-item")).to_have_count(1)
    page.mouse.move(canvas["x"] + 5, canvas["y"] + 5)  # no hover label over the mark
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "recist.png"))

    page.keyboard.press("f")
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
