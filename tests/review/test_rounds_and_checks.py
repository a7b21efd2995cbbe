"""The reviewer over a run of several rounds (tests/review/staged.py), as a radiologist used it on
the demo's run (issue 37, item 5): what "Verify lesions" lists, the score it shows, which proposals
a verdict may name, lesions verified twice, conflicts that say who, the export of every verified
lesion, and requests that must be refused (slice names, types, body size)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from lesion_harvester.cli.main import main  # noqa: E402
from lesion_harvester.harvest.ledger import Ledger  # noqa: E402
from lesion_harvester.io.annotations import read_slice_boxes  # noqa: E402
from lesion_harvester.io.deeplesion import DeepLesionDataset  # noqa: E402
from lesion_harvester.review.app import MAX_BODY_BYTES, create_app  # noqa: E402
from tests.review.staged import EXPONENTS, PROPOSALS, THRESHOLDS, staged_run  # noqa: E402

TOKEN = "staged-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def staged(tiny_dataset, tmp_path):
    return staged_run(tiny_dataset, tmp_path / "run")


@pytest.fixture
def client(staged):
    return TestClient(create_app(staged.run, staged.data, token=TOKEN))


def _post(client, **body):
    return client.post("/api/verdicts", headers=AUTH, json={"reviewer": "alice", "base": 0, **body})


def _ok(answer) -> dict:
    assert answer.status_code == 200, answer.text
    return answer.json()["verdict"]


def test_verify_lists_every_rounds_lesions_and_hard_negatives_never_a_holdout_one(client, staged):
    work = client.get("/api/worklist", headers=AUTH).json()
    # X was harvested in rounds 1 and 2: listed once, as round 2's (as harvested.pkl keeps it); W is
    # round 1's; the holdout's lesion is not listed
    assert [(d["volume"], d["ref"]) for d in work["lesions"]] == [(staged.a, "2:0"), (staged.b, "1:0")]
    assert [d["round"] for d in work["lesions"]] == [2, 1]
    # hard negatives of both rounds, highest s_g first, the holdout's left out
    assert [(d["volume"], d["ref"], d["s_g"]) for d in work["hard_negatives"]] == [
        (staged.a, "2:1", 0.8), (staged.a, "1:1", 0.7)]
    assert staged.holdout not in {v["key"] for v in work["volumes"]}
    # nearest its own round's threshold first: W (0.765 vs 0.6) before X (0.828 vs 0.5)
    near = client.get("/api/worklist?order=threshold", headers=AUTH).json()["lesions"]
    assert [d["ref"] for d in near] == ["1:0", "2:0"]


def test_a_verdict_on_a_listed_lesion_of_an_earlier_round_is_kept_listed(client, staged):
    """Once a reviewer judged round 1's instance of a lesion, the list shows that one (with its verdict)."""
    _ok(_post(client, volume=staged.a, kind="proposal", ref="1:1", action="reject"))
    work = client.get("/api/worklist", headers=AUTH).json()
    listed = {d["ref"]: d for d in work["hard_negatives"]}
    assert listed["1:1"]["verdict"]["action"] == "reject"


def test_the_score_is_the_harvests_fused_score_with_its_formula(client, staged):
    session = client.get("/api/session", headers=AUTH).json()
    assert session["round"] == 2 and session["threshold"] == THRESHOLDS[2]
    assert session["score_formula"] == "s = s_g * s_c^w"
    assert session["rounds"] == [{"round": r, "threshold": THRESHOLDS[r], "fusion_exponent": EXPONENTS[r]}
                                 for r in (1, 2)]
    info = client.get(f"/api/volumes/{staged.a}", headers=AUTH).json()
    for p in info["proposals"]:
        r, idx = (int(v) for v in p["ref"].split(":"))
        t, s_c, status = PROPOSALS[r]["a"][idx]
        assert p["status"] == status and p["round"] == r
        assert p["s"] == pytest.approx(t.score * s_c ** EXPONENTS[r], abs=1e-4)  # not s_g, not s_g * s_c
        assert p["s"] == pytest.approx(p["s_g"] * p["s_c"] ** EXPONENTS[r], abs=2e-4)


def test_the_volume_shows_its_listed_lesions_of_other_rounds(client, staged):
    info = client.get(f"/api/volumes/{staged.a}", headers=AUTH).json()
    # round 2's proposals and round 1's listed hard negative Y; not 1:0 (X, listed as 2:0) nor 1:2
    assert [p["ref"] for p in info["proposals"]] == ["2:0", "2:1", "2:2", "2:3", "2:4", "1:1"]


def test_a_verdict_names_a_proposal_the_reviewer_can_see(client, staged):
    """docs/review-api.md: a proposal of another round is refused (400), unless the work list lists it."""
    for ref in ("1:0", "1:2"):  # X's round-1 instance (2:0 is listed), a proposal set aside in round 1
        refused = _post(client, volume=staged.a, kind="proposal", ref=ref, action="accept")
        assert refused.status_code == 400 and "round 1" in refused.json()["detail"], refused.text
    assert Ledger(staged.run / "ledger.sqlite").verdicts() == []
    _ok(_post(client, volume=staged.a, kind="proposal", ref="1:1", action="reject"))  # listed: Y
    _ok(_post(client, volume=staged.b, kind="proposal", ref="1:0", action="accept"))  # listed: W
    refused = _post(client, volume=staged.holdout, kind="proposal", ref="2:0", action="accept")
    assert refused.status_code == 400 and "holdout" in refused.json()["detail"]


def test_an_old_verdict_on_an_unlisted_proposal_is_shown_and_can_be_cleared(client, staged):
    """A verdict given before the check (the demo's '1:0') is seen in the volume and can be withdrawn."""
    ledger = Ledger(staged.run / "ledger.sqlite")
    old = ledger.add_verdict(staged.a, "proposal", "1:0", "accept", "radiologist", 0)
    info = client.get(f"/api/volumes/{staged.a}", headers=AUTH).json()
    shown = {p["ref"]: p for p in info["proposals"]}
    assert shown["1:0"]["verdict"]["id"] == old["id"] and shown["1:0"]["round"] == 1
    cleared = _ok(_post(client, volume=staged.a, kind="proposal", ref="1:0", action="clear", base=old["id"]))
    assert cleared["replaces"] == old["id"]
    again = _post(client, volume=staged.a, kind="proposal", ref="1:0", action="accept", base=cleared["id"])
    assert again.status_code == 400


def test_a_lesion_verified_already_is_not_verified_twice_unseen(client, staged):
    accepted = _ok(_post(client, volume=staged.a, kind="proposal", ref="2:0", action="accept"))
    # bob, whose page predates alice's accept, draws X on its key slice and on the next one
    for z in (4, 5):
        twice = client.post("/api/verdicts", headers=AUTH, json=dict(
            volume=staged.a, kind="drawn", ref="", action="draw", z_index=z, box_xyxy_px=[20, 21, 33, 34],
            base=0, reviewer="bob"))
        assert twice.status_code == 409, (z, twice.text)
        body = twice.json()
        assert body["duplicate_of"]["id"] == accepted["id"]
        assert "not saved" in body["detail"] and "alice" in body["detail"] and "2:0" in body["detail"]
    # a box elsewhere is another lesion; an adjusted box of the accepted proposal is no second one
    _ok(_post(client, volume=staged.a, kind="drawn", ref="", action="draw", z_index=4, box_xyxy_px=[70, 10, 80, 20]))
    adjusted = _ok(_post(client, volume=staged.a, kind="proposal", ref="2:0", action="adjust", base=accepted["id"],
                         z_index=4, box_xyxy_px=[19, 19, 35, 35]))
    assert adjusted["replaces"] == accepted["id"]
    # bob looked: it is another lesion after all; saying so saves it
    _ok(_post(client, volume=staged.a, kind="drawn", ref="", action="draw", z_index=4, box_xyxy_px=[20, 21, 33, 34],
              distinct_from=["2:0"]))
    # Y, listed as round 1's hard negative 1:1, accepted; its round-2 instance 2:3 is the same lesion
    _ok(_post(client, volume=staged.a, kind="proposal", ref="1:1", action="accept"))
    dup = _post(client, volume=staged.a, kind="proposal", ref="2:3", action="accept")
    assert dup.status_code == 409 and dup.json()["duplicate_of"]["ref"] == "1:1"
    _ok(_post(client, volume=staged.a, kind="proposal", ref="2:3", action="reject"))  # a rejection is no lesion


def test_a_conflict_says_who_did_what_and_that_nothing_was_saved(client, staged):
    first = _ok(_post(client, volume=staged.a, kind="proposal", ref="2:0", action="accept"))
    late = client.post("/api/verdicts", headers=AUTH, json=dict(volume=staged.a, kind="proposal", ref="2:0",
                                                                action="reject", base=0, reviewer="bob"))
    assert late.status_code == 409
    detail = late.json()["detail"]
    assert detail.startswith("not saved") and "alice" in detail and "'accept'" in detail and "2:0" in detail
    assert first["at"] in detail and late.json()["current"]["id"] == first["id"]


def test_slice_names_are_ascii_digits(client, staged):
    for name in ("%C2%B2.png", "%D9%A3.png", "1%C2%B2.png", "+1.png", "1e3.png", "9999999.png"):
        answer = client.get(f"/api/volumes/{staged.a}/slices/{name}", headers=AUTH)
        assert answer.status_code == 400, (name, answer.status_code, answer.text)
        assert "Z.png" in answer.json()["detail"]
    assert client.get(f"/api/volumes/{staged.a}/slices/0.png", headers=AUTH).status_code == 200


@pytest.mark.parametrize("fields", [
    dict(box_xyxy_px=["20", "20", "30", "30"], z_index=4),
    dict(box_xyxy_px=[20, 20, 30, 30], z_index=True),
    dict(box_xyxy_px=[20, 20, 30, 30], z_index=4.0),
    dict(box_xyxy_px=[20, True, 30, 30], z_index=4),
    dict(box_xyxy_px=[20, 20, 30, 30], z_index="4"),
    dict(box_xyxy_px=[20, 20, 30, 30], z_index=4, zindex=4),  # a misspelt field
    dict(recist={"long_axis_px": ["1", 1, 9, 2], "short_axis_px": [2, 2, 3, 3]}, z_index=4),
])
def test_numbers_must_be_json_numbers(client, staged, fields):
    answer = _post(client, volume=staged.a, kind="drawn", ref="", action="draw", **fields)
    assert answer.status_code == 400, answer.text
    assert isinstance(answer.json()["detail"], str) and "\n" not in answer.json()["detail"]
    assert Ledger(staged.run / "ledger.sqlite").verdicts() == []


def test_the_service_alone_refuses_strings_and_booleans(staged):
    """The service checks in depth (it is also called without the app's model)."""
    from lesion_harvester.review.service import ReviewError, ReviewService

    service = ReviewService(staged.run, staged.data)
    for fields in (dict(box_xyxy_px=["20", "20", "30", "30"], z_index=4), dict(box_xyxy_px=[20, 20, 30, 30],
                                                                              z_index=True)):
        with pytest.raises(ReviewError) as refused:
            service.submit(dict(volume=staged.a, kind="drawn", ref="", action="draw", reviewer="x", **fields))
        assert refused.value.status == 400


def test_a_large_body_is_refused_unread(client, staged):
    big = b'{"volume": "' + b"x" * (30 * 1024 * 1024) + b'"}'
    answer = client.post("/api/verdicts", headers={**AUTH, "Content-Type": "application/json"}, content=big)
    assert answer.status_code == 413 and str(MAX_BODY_BYTES) in answer.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"volume": "'
        for _ in range(100):
            yield b"x" * 4096
        yield b'"}'

    answer = client.post("/api/verdicts", headers={**AUTH, "Content-Type": "application/json"}, content=chunks())
    assert answer.status_code == 413
    assert client.post("/api/verdicts", content=big).status_code == 401  # the token is checked first
    assert Ledger(staged.run / "ledger.sqlite").verdicts() == []
    _ok(_post(client, volume=staged.a, kind="proposal", ref="2:0", action="accept"))  # a verdict still passes


def test_export_writes_every_verified_lesion_once(client, staged, tmp_path, capsys):
    marks = DeepLesionDataset(staged.data).marks([staged.a])[staged.a]
    # the demo's case: X accepted as round 1's 1:0 (before that was refused) and as round 2's 2:0
    Ledger(staged.run / "ledger.sqlite").add_verdict(staged.a, "proposal", "1:0", "accept", "radiologist", 0)
    _ok(_post(client, volume=staged.a, kind="proposal", ref="2:0", action="accept", distinct_from=["1:0"]))
    _ok(_post(client, volume=staged.a, kind="volume", action="fully_annotated"))
    # volume b is not marked fully annotated: its lesions W and a drawn one are still verified lesions
    _ok(_post(client, volume=staged.b, kind="proposal", ref="1:0", action="accept"))
    _ok(_post(client, volume=staged.b, kind="drawn", ref="", action="draw", z_index=3, box_xyxy_px=[5, 5, 15, 15]))
    _ok(_post(client, volume=staged.b, kind="proposal", ref="2:0", action="reject"))

    out = tmp_path / "reviewed_v_m.pkl"
    assert main(["export", str(staged.run), "--reviewed", str(out), "--data", str(staged.data)]) == 0
    printed = capsys.readouterr().out
    labels = read_slice_boxes(out)
    assert len(labels[staged.a]) == len(marks) + 1  # its marks and X, once
    assert staged.b not in labels  # not complete labels
    verified = read_slice_boxes(tmp_path / "reviewed_v_m.verified_lesions.pkl")
    assert set(verified) == {staged.b}
    assert sorted((b.z_index, b.box_xyxy_px) for b in verified[staged.b]) == [
        (3, (5.0, 5.0, 15.0, 15.0)), (11, (30.0, 30.0, 46.0, 46.0))]
    assert (tmp_path / "reviewed_v_m.verified_lesions.csv").is_file()
    assert "2 verified lesions in 1 volumes not marked fully annotated" in printed
    assert "1 proposals reviewers rejected" in printed
