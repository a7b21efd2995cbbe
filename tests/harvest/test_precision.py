"""harvest/precision.py: the precision of new proposals, estimated from V_M and from held-out marks."""

import numpy as np
import pytest
from scipy.stats import beta

from lesion_harvester.harvest.ledger import ProposalRow
from lesion_harvester.harvest.precision import (
    TAIL_COUNT,
    TAIL_MIN,
    Evidence,
    MarkRates,
    MarksEvidence,
    binomial_interval,
    choose_threshold,
    estimated_precision,
    false_positive_rate,
    long_side_mm,
    mark_rates,
    marks_evidence,
    precision_interval,
    precision_lower_bound,
    size_bin,
    volumes_for_lower_bound,
)
from lesion_harvester.structures import RecistMark, SliceBox, Tracklet

MARK_RATE = np.array([0.25, 0.4, 0.6, 0.85])  # P(marked | size bin): larger lesions are marked more often


def _world(seed: int, n_volumes: int = 2000):
    """Calibration volumes with lesions of four size bins, marked at MARK_RATE, found at a rate that
    grows with size whether marked or not, plus false positives; and a V_M measuring MARK_RATE.
    Returns the evidence and the true precision of the new proposals above a score."""
    rng = np.random.default_rng(seed)
    lesion_volume = np.repeat(np.arange(n_volumes), rng.integers(1, 6, size=n_volumes))
    size = rng.integers(4, size=len(lesion_volume))
    proposed = rng.random(len(size)) < 0.3 + 0.15 * size
    marked = rng.random(len(size)) < MARK_RATE[size]
    fp_volume = np.repeat(np.arange(n_volumes), rng.integers(0, 4, size=n_volumes))
    # proposals: the proposed lesions (scores 0.4-1), then false positives (lower scores on the whole)
    scores = np.concatenate([rng.uniform(0.4, 1.0, proposed.sum()), rng.uniform(0.0, 0.8, len(fp_volume))])
    bins = np.concatenate([np.where(marked, size, -1)[proposed], np.full(len(fp_volume), -1)])
    truth_lesion = np.concatenate([~marked[proposed], np.zeros(len(fp_volume), dtype=bool)])
    volume = np.concatenate([lesion_volume[proposed], fp_volume])
    vm_total = rng.integers(5, 15, size=(400, 4))  # a large V_M: its marked shares are known well
    vm_marked = rng.binomial(vm_total, MARK_RATE)
    rates = MarkRates(vm_marked, vm_total)
    ev = Evidence(np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64),
                  MarksEvidence(scores, bins, volume, rates))

    def true_precision(t: float) -> float:
        new = (scores >= t) & (bins < 0)
        return float(truth_lesion[new].mean())

    return ev, true_precision


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_marks_estimate_the_precision_of_unmarked_lesions(seed):
    # 8,000 volumes: the estimate's spread is about 0.017 here (0.035 at 2,000 volumes, unbiased over
    # 40 worlds: mean error +0.002), so 0.05 is three spreads
    ev, true_precision = _world(seed, n_volumes=8000)
    for t in (0.5, 0.7):
        assert estimated_precision(t, ev, "marks") == pytest.approx(true_precision(t), abs=0.05)
    # above 0.85 every new proposal is a lesion; with fewer proposals up there the estimate spreads more
    assert true_precision(0.85) == 1.0 and estimated_precision(0.85, ev, "marks") >= 0.85
    t = choose_threshold(ev, "marks", 0.9)
    assert np.isfinite(t) and estimated_precision(t, ev, "marks") >= 0.9 and true_precision(t) >= 0.85


def test_the_interval_covers_the_truth():
    covered = 0
    for seed in range(10):
        ev, true_precision = _world(seed, n_volumes=300)
        lo, hi = precision_interval(0.7, ev, "marks", seed=seed, samples=100)
        assert lo < estimated_precision(0.7, ev, "marks") < hi
        covered += lo <= true_precision(0.7) <= hi
    assert covered >= 8  # a 95% interval, over 10 worlds


def test_a_few_proposals_give_a_wide_interval_even_when_all_are_lesions():
    # V_M: three lesions and no false positive above 0.5 (and a false positive below). A bootstrap
    # over volumes only ever draws 100% there; the exact binomial interval says what three can say.
    ev = Evidence(np.array([0.9, 0.8, 0.7, 0.2]), np.array([True, True, True, False]), np.array([0, 1, 2, 3]))
    assert estimated_precision(0.5, ev, "vm") == 1.0
    lo, hi = precision_interval(0.5, ev, "vm")
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 3), abs=1e-6)  # Clopper-Pearson for 3 of 3
    assert precision_interval(0.95, ev, "vm") is None  # nothing above: no estimate, no interval
    lo, hi = precision_interval(0.1, ev, "vm")
    assert lo < 0.75 < hi  # 3 of 4 (a bootstrap of four volumes may draw only lesions: hi can be 1)


def test_binomial_interval_matches_known_values():
    assert binomial_interval(0, 0) == (0.0, 1.0)
    lo, hi = binomial_interval(5, 10)
    assert lo == pytest.approx(0.1871, abs=1e-4) and hi == pytest.approx(0.8129, abs=1e-4)
    assert binomial_interval(0, 4)[0] == 0.0 and binomial_interval(4, 4)[1] == 1.0
    assert binomial_interval(2.6, 4) == binomial_interval(3, 4)  # estimated counts are rounded


def test_ignoring_size_would_be_wrong_here():
    # one rate for all sizes (V_M's overall marked share) misjudges a world where the large lesions,
    # found most often, are also marked most often: the size correction is what makes it right
    ev, true_precision = _world(0)
    flat = MarkRates(ev.marks.rates.marked.sum(axis=1, keepdims=True), ev.marks.rates.total.sum(axis=1, keepdims=True))
    flat_ev = Evidence(ev.vm_scores, ev.vm_lesion, ev.vm_volume,
                       MarksEvidence(ev.marks.scores, np.where(ev.marks.bins >= 0, 0, -1), ev.marks.volume, flat))
    assert abs(estimated_precision(0.7, flat_ev, "marks") - true_precision(0.7)) > \
        abs(estimated_precision(0.7, ev, "marks") - true_precision(0.7))


def test_no_marks_above_the_score_means_no_lesion_is_estimated_there():
    rates = MarkRates(np.array([[1, 1, 1, 1]]), np.array([[2, 2, 2, 2]]))
    marks = MarksEvidence(np.array([0.9, 0.8, 0.3]), np.array([-1, -1, 2]), np.array([0, 0, 1]), rates)
    ev = Evidence(np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64), marks)
    assert estimated_precision(0.5, ev, "marks") == 0.0  # two new proposals, no mark found up there
    assert estimated_precision(0.95, ev, "marks") is None  # nothing above
    assert choose_threshold(ev, "marks", 0.5) == pytest.approx(0.3)  # the mark at 0.3 stands for one lesion


def test_v_m_without_lesions_falls_back_on_smoothed_rates():
    empty = MarkRates(np.zeros((3, 4), dtype=np.int64), np.zeros((3, 4), dtype=np.int64))
    assert np.allclose(empty.rates(), 0.5)  # nothing known: one in two
    some = MarkRates(np.array([[0, 4, 0, 0]]), np.array([[0, 4, 0, 0]]))
    rates = some.rates()
    assert rates[1] == pytest.approx((4 + 0.9) / 5) and rates[0] == pytest.approx(0.9)  # empty bins: the overall
    assert some.rates(np.array([0, 0])).tolist() == MarkRates(np.array([[0, 8, 0, 0]]), np.array([[0, 8, 0, 0]])
                                                              ).rates().tolist()  # a bootstrap sample of rows


def test_the_pooled_rule_counts_v_m_and_v_h_together():
    rates = MarkRates(np.array([[1, 1, 1, 1]]), np.array([[2, 2, 2, 2]]))  # half of the lesions marked
    marks = MarksEvidence(np.array([0.9, 0.9, 0.9]), np.array([0, -1, -1]), np.array([0, 0, 0]), rates)
    ev = Evidence(np.array([0.95, 0.5]), np.array([False, True]), np.array([0, 0]), marks)
    assert estimated_precision(0.9, ev, "vm") == 0.0  # V_M's one proposal up there is a false positive...
    assert estimated_precision(0.9, ev, "marks") == pytest.approx(0.5)  # one mark found: one unmarked of 2 new
    assert estimated_precision(0.9, ev, "combined") == pytest.approx(1 / 3)  # (0 + 1) / (1 + 2)
    assert choose_threshold(ev, "vm", 0.95) == float("inf")  # ...so the paper's rule finds no threshold
    with pytest.raises(ValueError, match="unknown threshold rule"):
        estimated_precision(0.9, ev, "median")


def test_mark_rates_and_evidence_from_labels_and_proposals():
    box = (100.0, 100.0, 129.0, 109.0)  # 30 px wide, 20 px without the padding: 20 mm at 1 mm pixels
    small = (10.0, 10.0, 24.0, 24.0)  # 5 mm
    mark = RecistMark("vm", 3, (105, 105, 124, 105), (115, 100, 115, 109), box)
    rates = mark_rates({"vm": [SliceBox(3, box), SliceBox(3, small)]}, {"vm": [mark]}, {"vm": 1.0})
    assert long_side_mm(box, 1.0) == 20.0 and size_bin([5.0, 10.0, 25.0, 40.0]).tolist() == [0, 1, 2, 3]
    assert rates.total.tolist() == [[1, 0, 1, 0]] and rates.marked.tolist() == [[0, 0, 1, 0]]

    def row(idx, t, status, score):
        return ProposalRow(1, "vh", idx, t, t.score, 0.5, score, status)

    on_mark = Tracklet(np.array([3]), np.array([box]), np.array([0.9]))
    piece = Tracklet(np.array([4]), np.array([box]), np.array([0.8]))  # the marked lesion on the next slice
    new = Tracklet(np.array([3]), np.array([small]), np.array([0.7]))
    ev = marks_evidence([row(0, on_mark, "recist", 0.6), row(1, piece, "candidate", 0.5),
                         row(2, new, "candidate", 0.4)],
                        {"vh": [RecistMark("vh", 3, mark.long_axis_px, mark.short_axis_px, box)]}, {"vh": 1.0}, rates)
    assert ev.scores.tolist() == [0.6, 0.4] and ev.bins.tolist() == [2, -1]  # the piece is left out


def test_the_best_a_rule_can_promise():
    from lesion_harvester.harvest.precision import best_estimate

    ev, true_precision = _world(3, n_volumes=2000)
    t, p = best_estimate(ev, "marks")
    assert p >= estimated_precision(0.5, ev, "marks") and p == estimated_precision(t, ev, "marks")
    assert best_estimate(Evidence(np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)), "vm") is None


def test_volumes_a_threshold_needs_for_a_lower_bound_of_ninety_percent():
    # six new lesions and no false positive on eight volumes: 0.05 ** (1 / k) >= 0.9 needs k >= 28.4
    # lesions, at 0.75 a volume 38 volumes
    needed = volumes_for_lower_bound(6, 0, 8)
    assert needed == 38
    assert precision_lower_bound(6, 0) == pytest.approx(0.05 ** (1 / 6))
    scaled = [beta.ppf(0.05, 6 * n / 8, 1) for n in (needed - 1, needed)]
    assert scaled[0] < 0.90 <= scaled[1]
    assert volumes_for_lower_bound(57, 3, 10) > volumes_for_lower_bound(60, 0, 10)  # errors cost volumes
    assert volumes_for_lower_bound(9, 1, 10) is None  # 0.90 seen: no number of volumes lifts the bound above it
    assert volumes_for_lower_bound(0, 0, 10) is None and volumes_for_lower_bound(3, 0, 0) is None


def test_the_report_says_what_each_certificate_is_worth():
    from lesion_harvester.report.harvest_report import _certificate_lines, _support

    rounds = [{"round": 1, "vm_support": _support({"vm_new_lesions_above": 6, "vm_false_positives_above": 0,
                                                   "precision_lower_bound": precision_lower_bound(6, 0),
                                                   "vm_volumes": 8})},
              {"round": 2, "vm_support": _support({"vm_new_lesions_above": 4, "vm_false_positives_above": 1,
                                                   "precision_lower_bound": precision_lower_bound(4, 1),
                                                   "vm_volumes": 8})},
              {"round": 3, "vm_support": _support({})}]  # a run older than the record: nothing said
    text = "\n".join(_certificate_lines({"rounds": rounds}))
    assert "Round 1: 6 new lesions and 0 false positives above the threshold on 8 V_M volumes" in text
    assert "bound its precision at >= 0.61 (95%); for >= 0.90, about 38 fully annotated volumes" in text
    assert "(30 more)" in text
    assert "Round 2:" in text and "no number of volumes would: its precision on V_M is 0.80" in text
    assert "Round 3" not in text


def test_false_positive_rate_counts_below_the_tail_and_fits_it_above():
    # 400 false positives over 10 volumes, scores 0.0000-0.9975: up to the tail's start a count
    scores = np.arange(400) / 400.0
    rate = false_positive_rate(np.array([0.0, 0.5, 0.8]), scores, 10)
    assert rate.tolist() == pytest.approx([40.0, 20.0, 8.0])
    # above it an exponential tail through the TAIL_COUNT highest (their mean excess): positive and
    # falling past the last false positive, where the count says 0; never below the count
    tail_scores = np.sort(scores)[-TAIL_COUNT:]
    u = tail_scores[0]
    assert u == pytest.approx((400 - TAIL_COUNT) / 400.0)
    at = np.array([0.97, 0.99, 1.2])
    tail = false_positive_rate(at, scores, 10)
    fitted = TAIL_COUNT / 10 * np.exp(-(at - u) / (tail_scores - u).mean())
    counted = np.array([12, 4, 0]) / 10
    assert tail.tolist() == pytest.approx(np.maximum(fitted, counted).tolist())
    assert fitted[0] < counted[0] and fitted[2] > counted[2]  # each side decides once
    assert 0 < tail[2] < tail[1] < tail[0] < TAIL_COUNT / 10
    # too few false positives to fit a tail: the count alone
    assert false_positive_rate(np.array([0.5, 2.0]), np.array([0.4, 0.6, 0.9]), 3).tolist() == pytest.approx([2 / 3, 0])
    assert TAIL_MIN <= TAIL_COUNT


def test_false_positive_rate_keeps_the_count_where_most_fused_scores_are_near_zero():
    # the LPC rejects most false positives: 5,000 fused scores under 1e-5 and 30 between 0.1 and 0.62
    # over 10 volumes. Counted up to the 20th highest; a tail fitted from the 95% quantile of all of
    # them (the rule's first form) said 0.02 per volume above 0.3, where V_M counts 1.8
    rng = np.random.default_rng(0)
    spread = np.linspace(0.1, 0.62, 30)
    scores = np.r_[rng.uniform(0, 1e-5, 5000), spread]
    rate = false_positive_rate(np.array([0.2, 0.3, 0.5, 0.7]), scores, 10)
    assert rate[0] == pytest.approx((spread >= 0.2).sum() / 10)
    assert rate[1] == pytest.approx((spread >= 0.3).sum() / 10) and rate[1] > 1.5
    assert rate[2] >= (spread >= 0.5).sum() / 10 and 0 < rate[3] < rate[2]  # the tail past the last one
    # too few above 0 to fill the tail: the fit starts near 0 and the count still holds
    few = np.r_[rng.uniform(0, 1e-5, 5000), np.linspace(0.3, 0.62, 12)]
    assert false_positive_rate(np.array([0.3]), few, 10)[0] == pytest.approx(1.2)


def _rate_world(seed: int, n_vm: int, n_vh: int = 400):
    """V_M and V_H volumes whose false positives follow one law (Poisson 30 per volume, scores with an
    exponential tail, mean 0.15, as the bench LPG's count of false positives above s falls about
    log-linearly) and whose lesions (1-5 per volume) score Beta(3, 3): above 0.6 about a third of the
    proposals are false, as on the bench. Returns the evidence (V_M complete, V_H's scores only) and
    V_H's scores and truth."""
    rng = np.random.default_rng(seed)

    def volumes(n):
        fp = [x[x < 1.0] for x in (rng.exponential(0.15, rng.poisson(30)) for _ in range(n))]
        les = [rng.beta(3, 3, rng.integers(1, 6)) for _ in range(n)]
        scores = np.concatenate(fp + les)
        lesion = np.repeat([False, True], [sum(map(len, fp)), sum(map(len, les))])
        volume = np.concatenate([np.repeat(np.arange(n), list(map(len, part))) for part in (fp, les)])
        return scores, lesion, volume

    vm_s, vm_l, vm_v = volumes(n_vm)
    vh_s, vh_l, _ = volumes(n_vh)
    return Evidence(vm_s, vm_l, vm_v, vh_scores=vh_s, vh_volumes=n_vh), vh_s, vh_l


@pytest.mark.parametrize("seed", [0, 1])
def test_the_rate_rule_estimates_v_h_s_precision_from_v_m_s_false_positives(seed):
    # with many V_M volumes the estimate is V_H's precision, also beyond most of V_M's false positives
    ev, vh_s, vh_l = _rate_world(seed, n_vm=400, n_vh=2000)
    for t in (0.5, 0.6, 0.7):
        assert estimated_precision(t, ev, "fp_rate") == pytest.approx(vh_l[vh_s >= t].mean(), abs=0.05)


def test_at_the_paper_s_threshold_the_rate_rule_errs_less_than_v_m_s_own_count():
    # ten V_M volumes: where the paper's 95% threshold exists, V_M's count above it reads 1.000 while
    # V_H's proposals there are 0.1-0.7 lesions; the rate rule misses by less than half as much
    errors = {"vm": [], "fp_rate": []}
    for seed in range(10):
        ev, vh_s, vh_l = _rate_world(seed, n_vm=10)
        t = choose_threshold(ev, "vm", 0.95)
        if np.isfinite(t):
            for rule in errors:
                errors[rule].append(abs(estimated_precision(t, ev, rule) - vh_l[vh_s >= t].mean()))
    assert len(errors["vm"]) >= 4 and min(errors["vm"]) > 0.3
    assert np.mean(errors["fp_rate"]) < np.mean(errors["vm"]) / 2


def test_the_rate_rule_s_interval_covers_v_h_s_precision_on_ten_volumes_of_v_m():
    covered = 0
    for seed in range(8):
        ev, vh_s, vh_l = _rate_world(seed, n_vm=10)
        lo, hi = precision_interval(0.6, ev, "fp_rate", samples=100)
        covered += lo <= vh_l[vh_s >= 0.6].mean() <= hi
    assert covered >= 6  # 95% intervals from a bootstrap of ten volumes cover a little less often


def test_the_rate_rule_needs_v_h_s_scores_and_v_m_s_false_positives():
    ev = Evidence(np.array([0.9, 0.2]), np.array([True, False]), np.array([0, 1]))
    assert not ev.has_fp_rate  # no V_H scores: the rule falls back to V_M's count
    assert choose_threshold(ev, "fp_rate", 0.95) == choose_threshold(ev, "vm", 0.95)
    with_vh = Evidence(ev.vm_scores, ev.vm_lesion, ev.vm_volume, vh_scores=np.array([0.95, 0.3, 0.25]), vh_volumes=2)
    assert with_vh.has_fp_rate
    # at 0.25: three V_H proposals, V_M's rate 0.5 false positives per volume above 0.2 -> 1 expected
    # false positive in V_H's two volumes (one false positive: no tail fitted)
    assert estimated_precision(0.2, with_vh, "fp_rate") == pytest.approx(2 / 3)
    assert estimated_precision(0.5, with_vh, "fp_rate") == pytest.approx(1.0)
    assert estimated_precision(0.99, with_vh, "fp_rate") is None  # no V_H proposal above


def test_vm_and_fp_rate_takes_the_stricter_threshold_and_the_lower_estimate():
    # V_M (two volumes): lesions at 0.9 and 0.8, a false positive at 0.7, a lesion at 0.6 and a false
    # positive at 0.3; V_H (two volumes) has new proposals at 0.75, 0.72, 0.5, 0.4
    ev = Evidence(np.array([0.9, 0.8, 0.7, 0.6, 0.3]), np.array([True, True, False, True, False]),
                  np.array([0, 0, 1, 1, 1]), vh_scores=np.array([0.75, 0.72, 0.5, 0.4]), vh_volumes=2)
    assert choose_threshold(ev, "vm", 0.95) == 0.8  # the false positive at 0.7 breaks V_M's precision
    # V_M has no false positive above 0.7, so V_H's two proposals above it are expected real
    assert choose_threshold(ev, "fp_rate", 0.95) == 0.72
    assert choose_threshold(ev, "vm_and_fp_rate", 0.95) == 0.8
    # at 0.5: V_M 3 of 4 (0.75); V_H 3 proposals less 0.5 x 2 expected false (0.667): the lower
    assert estimated_precision(0.5, ev, "vm_and_fp_rate") == pytest.approx(2 / 3)
    assert estimated_precision(0.65, ev, "vm_and_fp_rate") == pytest.approx(0.5)  # V_M 2 of 3, V_H 2 less 1
    # the other way round: V_M's 19 lesions outweigh its one false positive at 0.6 (19 / 20 = 0.95), but
    # that false positive in one of V_M's two volumes predicts five in V_H's ten volumes
    ev = Evidence(np.r_[np.full(19, 0.9), 0.6], np.r_[np.ones(19, bool), False], np.r_[np.zeros(19, int), 1],
                  vh_scores=np.array([0.95, 0.92, 0.6, 0.55]), vh_volumes=10)
    assert choose_threshold(ev, "vm", 0.95) == 0.6
    assert choose_threshold(ev, "fp_rate", 0.95) == 0.92
    assert choose_threshold(ev, "vm_and_fp_rate", 0.95) == 0.92
    assert estimated_precision(0.6, ev, "vm_and_fp_rate") == 0.0  # 3 V_H proposals, 5 false expected
    # without V_H's scores the rule is V_M's count
    alone = Evidence(ev.vm_scores, ev.vm_lesion, ev.vm_volume)
    assert choose_threshold(alone, "vm_and_fp_rate", 0.95) == choose_threshold(alone, "vm", 0.95)
    assert estimated_precision(0.6, alone, "vm_and_fp_rate") == pytest.approx(0.95)


def test_vm_and_fp_rate_harvests_nothing_where_v_h_never_reaches_the_precision():
    # ten V_M volumes of a world whose lesions never score apart from its false positives: V_M's count
    # finds a 95% threshold in some draws (V_H 0.1-0.7 real above it); with the rate it finds none
    found = 0
    for seed in range(10):
        ev, vh_s, vh_l = _rate_world(seed, n_vm=10)
        vm = choose_threshold(ev, "vm", 0.95)
        found += np.isfinite(vm) and vh_l[vh_s >= vm].mean() < 0.9
        assert not np.isfinite(choose_threshold(ev, "vm_and_fp_rate", 0.95))
    assert found >= 3
