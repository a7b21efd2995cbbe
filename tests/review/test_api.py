"""The reviewer's HTTP API (docs/review-api.md): every endpoint, the token, identifiers that try to
leave the run and data folders, validation of writes, and concurrent reviewers."""

from __future__ import annotations

import io
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from lesion_harvester.harvest.ledger import Ledger  # noqa: E402
from lesion_harvester.io.deeplesion import DeepLesionDataset  # noqa: E402
from lesion_harvester.review.app import create_app  # noqa: E402
from lesion_harvester.review.service import window_to_uint8  # noqa: E402

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def run(tiny_harvest_run, tmp_path):
    """A private copy of the tiny harvest run (verdicts are written into its ledger)."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_harvest_run, copy)
    return copy


@pytest.fixture
def client(run, tiny_dataset):
    return TestClient(create_app(run, tiny_dataset, token=TOKEN))


def _volume_with_proposals(client) -> dict:
    work = client.get("/api/worklist", headers=AUTH).json()
    key = next(v["key"] for v in work["volumes"] if v["proposals"] > 1)
    return client.get(f"/api/volumes/{key}", headers=AUTH).json()


def _post(client, **body):
    return client.post("/api/verdicts", headers=AUTH, json={"reviewer": "alice", "base": 0, **body})


def test_every_path_needs_the_token(client, tiny_dataset):
    key = DeepLesionDataset(tiny_dataset).keys()[0]
    paths = ["/", "/static/app.js", "/api/session", "/api/worklist", f"/api/volumes/{key}",
             f"/api/volumes/{key}/slices/0.png", f"/api/verdicts?volume={key}"]
    for path in paths:
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    assert client.post("/api/verdicts", json={}).status_code == 401
    assert client.get("/api/session", params={"token": TOKEN}).status_code == 200
    # opening the page with the token sets a cookie that the page's own requests carry
    fresh = TestClient(client.app)
    page = fresh.get("/", params={"token": TOKEN})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "httponly" in page.headers["set-cookie"].lower()
    assert fresh.get("/api/session").status_code == 200


def test_random_token_by_default(run, tiny_dataset):
    a, b = create_app(run, tiny_dataset), create_app(run, tiny_dataset)
    assert len(a.state.token) >= 24 and a.state.token != b.state.token


def test_session_worklist_and_volume(client, run, tiny_dataset):
    session = client.get("/api/session", headers=AUTH).json()
    assert session["round"] == 1 and set(session["windows"]) == {"soft tissue", "lung", "bone"}
    work = client.get("/api/worklist", headers=AUTH).json()
    ledger = Ledger(run / "ledger.sqlite")
    closed = set(ledger.volumes(holdout=True))
    harvest = set(ledger.volumes(role="harvest"))
    listed = [v["key"] for v in work["volumes"]]
    assert listed and set(listed) == harvest - closed  # V_H outside the holdout
    counts = {v["key"]: v["proposals"] for v in work["volumes"]}
    for key in listed:
        assert counts[key] == len(ledger.proposals(1, volumes=[key]))
    assert [x["key"] for x in client.get("/api/worklist?order=threshold", headers=AUTH).json()["volumes"]] == listed
    assert client.get("/api/worklist?order=size", headers=AUTH).status_code == 400

    info = client.get(f"/api/volumes/{listed[0]}", headers=AUTH).json()
    volume = DeepLesionDataset(tiny_dataset).load(listed[0])
    assert info["shape_zyx"] == list(volume.shape)
    marks = DeepLesionDataset(tiny_dataset).marks([listed[0]])[listed[0]]
    assert [m["z_index"] for m in info["marks"]] == [m.z_index for m in marks]
    rows = ledger.proposals(1, volumes=[listed[0]])
    assert [p["ref"] for p in info["proposals"]] == [f"1:{row.idx}" for row in rows]
    first = info["proposals"][0]
    assert first["status"] == rows[0].status and len(first["slices"]) == len(rows[0].tracklet.z_indices)


def test_slice_png_is_the_windowed_slice(client, tiny_dataset):
    key = _volume_with_proposals(client)["key"]
    volume = DeepLesionDataset(tiny_dataset).load(key)
    for level, width in ((40, 400), (-600, 1500)):
        answer = client.get(f"/api/volumes/{key}/slices/2.png", params={"level": level, "width": width}, headers=AUTH)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        image = np.asarray(Image.open(io.BytesIO(answer.content)))
        assert image.dtype == np.uint8 and image.shape == volume.hu_zyx.shape[1:]
        np.testing.assert_array_equal(image, window_to_uint8(volume.hu_zyx[2], level, width))
    n = volume.num_slices
    assert client.get(f"/api/volumes/{key}/slices/{n}.png", headers=AUTH).status_code == 400
    assert client.get(f"/api/volumes/{key}/slices/2.png?width=0", headers=AUTH).status_code == 400
    assert client.get(f"/api/volumes/{key}/slices/-1.png", headers=AUTH).status_code == 400
    assert client.get(f"/api/volumes/{key}/slices/2.jpg", headers=AUTH).status_code == 400


@pytest.mark.parametrize("path", [
    "/api/volumes/..%2F..%2Fetc%2Fpasswd",
    "/api/volumes/..",
    "/api/volumes/%2Fetc%2Fpasswd/slices/0.png",
    "/api/volumes/..%2FImages_png/slices/0.png",
    "/api/verdicts?volume=../../ledger.sqlite",
    "/static/..%2Fservice.py",
    "/static/index.html.bak",
    "/static/%2Fetc%2Fpasswd",
])
def test_identifiers_cannot_leave_the_folders(client, path):
    answer = client.get(path, headers=AUTH)
    assert answer.status_code in (400, 404), (path, answer.status_code)
    assert "root:" not in answer.text and "import" not in answer.text


def test_writes_are_validated(client, run):
    info = _volume_with_proposals(client)
    key, ref = info["key"], info["proposals"][0]["ref"]
    h, w = info["shape_zyx"][1:]
    bad = [
        dict(volume=key, kind="lesion", ref=ref, action="accept"),
        dict(volume=key, kind="proposal", ref=ref, action="draw"),
        dict(volume=key, kind="proposal", ref="1:99999", action="accept"),
        dict(volume=key, kind="proposal", ref="one", action="accept"),
        dict(volume=key, kind="proposal", ref=ref, action="adjust", z_index=0, box_xyxy_px=[5, 5, 2, 9]),
        dict(volume=key, kind="proposal", ref=ref, action="adjust", z_index=0, box_xyxy_px=[5, 5, w + 3, 9]),
        dict(volume=key, kind="proposal", ref=ref, action="adjust", z_index=info["shape_zyx"][0],
             box_xyxy_px=[1, 1, 2, 2]),
        dict(volume=key, kind="proposal", ref=ref, action="adjust", z_index=0, box_xyxy_px=[1, 1, 2]),
        dict(volume=key, kind="drawn", ref="", action="delete"),
        dict(volume=key, kind="drawn", ref="d999", action="delete"),
        dict(volume=key, kind="drawn", ref="", action="draw", z_index=0,
             recist={"long_axis_px": [1, 1, h + 5, 2], "short_axis_px": [2, 2, 3, 3]}),
        dict(volume=key, kind="volume", ref="x", action="fully_annotated"),
        dict(volume=key, kind="volume", ref="", action="fully_annotated", reviewer=""),
        dict(volume=key, kind="volume", ref="", action="fully_annotated", reviewer="x" * 65),
        dict(volume=key, kind="volume", ref="", action="fully_annotated", base=-1),
    ]
    for body in bad:
        answer = _post(client, **body)
        assert answer.status_code in (400, 422), (body, answer.status_code, answer.text)
    assert _post(client, volume="../nope", kind="volume", action="fully_annotated").status_code == 400
    assert _post(client, volume="000099_01_01_000-010", kind="volume", action="fully_annotated").status_code == 404
    holdout = Ledger(run / "ledger.sqlite").volumes(holdout=True)[0]
    refused = _post(client, volume=holdout, kind="volume", action="fully_annotated")
    assert refused.status_code == 400 and "holdout" in refused.json()["detail"]
    assert Ledger(run / "ledger.sqlite").verdicts() == []  # nothing refused was written


def test_each_action_and_the_audit_trail(client):
    info = _volume_with_proposals(client)
    key, (p0, p1) = info["key"], [p["ref"] for p in info["proposals"][:2]]
    accepted = _post(client, volume=key, kind="proposal", ref=p0, action="accept").json()["verdict"]
    assert accepted["replaced"]["status"] == info["proposals"][0]["status"]
    adjusted = _post(client, volume=key, kind="proposal", ref=p0, action="adjust", base=accepted["id"],
                     z_index=1, box_xyxy_px=[10, 11, 20.04, 22]).json()["verdict"]
    assert adjusted["replaces"] == accepted["id"] and adjusted["replaced"]["action"] == "accept"
    assert adjusted["box_xyxy_px"] == [10, 11, 20.0, 22]
    _post(client, volume=key, kind="proposal", ref=p1, action="reject")
    drawn = _post(client, volume=key, kind="drawn", ref="", action="draw", z_index=2,
                  recist={"long_axis_px": [10, 20, 30, 24], "short_axis_px": [18, 15, 21, 29]}).json()["verdict"]
    assert drawn["ref"] == f"d{drawn['id']}" and drawn["box_xyxy_px"] == [10, 15, 30, 29]
    _post(client, volume=key, kind="volume", action="fully_annotated")
    undone = _post(client, volume=key, kind="volume", action="clear", base=drawn["id"] + 1).json()["verdict"]
    assert undone["action"] == "clear"

    info = client.get(f"/api/volumes/{key}", headers=AUTH).json()
    by_ref = {p["ref"]: p["verdict"] for p in info["proposals"]}
    assert by_ref[p0]["action"] == "adjust" and by_ref[p1]["action"] == "reject"
    assert [d["ref"] for d in info["drawn"]] == [drawn["ref"]]
    assert info["fully_annotated"]["verdict"]["action"] == "clear"
    trail = client.get("/api/verdicts", params={"volume": key}, headers=AUTH).json()["verdicts"]
    assert [v["action"] for v in trail] == ["accept", "adjust", "reject", "draw", "fully_annotated", "clear"]
    progress = client.get("/api/worklist", headers=AUTH).json()["progress"]
    assert progress["alice"]["total"] == 6 and progress["alice"]["accept"] == 1


def test_two_reviewers_on_one_lesion_lose_nothing(client):
    info = _volume_with_proposals(client)
    key, ref = info["key"], info["proposals"][0]["ref"]
    a = client.post("/api/verdicts", headers=AUTH, json=dict(volume=key, kind="proposal", ref=ref, action="accept",
                                                             base=0, reviewer="alice"))
    b = client.post("/api/verdicts", headers=AUTH, json=dict(volume=key, kind="proposal", ref=ref, action="reject",
                                                             base=0, reviewer="bob"))
    assert a.status_code == 200 and b.status_code == 409
    assert b.json()["current"]["id"] == a.json()["verdict"]["id"]  # bob sees alice's verdict, then decides
    b = client.post("/api/verdicts", headers=AUTH, json=dict(volume=key, kind="proposal", ref=ref, action="reject",
                                                             base=a.json()["verdict"]["id"], reviewer="bob"))
    assert b.status_code == 200 and b.json()["verdict"]["replaces"] == a.json()["verdict"]["id"]


def test_concurrent_reviewers_are_serialized(client):
    """Four reviewers write ten verdicts each on one lesion at once, each retrying on 409 with the
    state it was shown: all forty are kept, each replacing exactly the one before it."""
    info = _volume_with_proposals(client)
    key, ref = info["key"], info["proposals"][0]["ref"]
    conflicts = []

    def reviewer(name: str) -> None:
        own = TestClient(client.app)
        base = 0
        for i in range(10):
            while True:
                answer = own.post("/api/verdicts", headers=AUTH, json=dict(
                    volume=key, kind="proposal", ref=ref, action=("accept", "reject")[i % 2], base=base, reviewer=name))
                if answer.status_code == 200:
                    base = answer.json()["verdict"]["id"]
                    break
                assert answer.status_code == 409, answer.text
                conflicts.append(name)
                current = answer.json()["current"]
                base = 0 if current is None else current["id"]

    threads = [threading.Thread(target=reviewer, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trail = client.get("/api/verdicts", params={"volume": key}, headers=AUTH).json()["verdicts"]
    assert len(trail) == 40
    assert [v["replaces"] for v in trail] == [None] + [v["id"] for v in trail[:-1]]
    assert sorted({v["reviewer"] for v in trail}) == ["r0", "r1", "r2", "r3"]


def test_the_annotate_fully_list_follows_select(client, run):
    from lesion_harvester.harvest.select import select_for_run

    before = client.get("/api/worklist", headers=AUTH).json()["volumes"]
    assert len(before) >= 2 and all(v["selected"] is None for v in before)
    chosen = select_for_run(run, 1, "lesion_rich")
    volumes = client.get("/api/worklist", headers=AUTH).json()["volumes"]
    assert volumes[0]["key"] == chosen[0].volume and volumes[0]["selected"]["rank"] == 1
    assert volumes[0]["selected"]["reason"] == chosen[0].reason and volumes[1]["selected"] is None
    rest = [v["key"] for v in before if v["key"] != chosen[0].volume]
    assert [v["key"] for v in volumes[1:]] == rest  # the others keep their order
