"""``riemann sweep`` on the mlp-teacher pair: the files it writes, predictions that are the closed
forms of the statistics it records, measurements that are the main job's (same keys, same test
batches), and the refusals."""

import json

import numpy as np
import pytest

import riemann
from analysis.cli import main
from analysis.jobs import sweep
from riemann import closed_form
from tests.analysis.helpers import results


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    assert main(["sweep", "--pair", "mlp-teacher", "--seeds", "3", "--out", str(out), "--quiet"]) == 0
    return out


def test_sweep_writes_its_record_report_and_figure(swept):
    rec = json.loads((swept / "sweep.json").read_text())
    (r,) = rec["pairs"]
    assert r["pair"] == "mlp-teacher" and rec["seeds"] == 3
    assert np.asarray(r["predicted"]["dare"]["mean"]).shape == (len(sweep.DARE_P), len(sweep.DARE_K)) == (20, 10)
    assert r["seconds"]["points_predicted"] >= 200
    assert len(r["expo"]["measured"]) == len(sweep.EXPO_ALPHA)
    assert len(r["bitdelta"]["measured"]) == len(sweep.BITDELTA_MULTIPLE) == len(r["predicted"]["bitdelta"]["mean"])
    assert (swept / "mlp-teacher-sweep.png").stat().st_size > 20_000
    md = (swept / "sweep.md").read_text()
    assert "## mlp-teacher" in md and "`dare:p=0.99,k=-1`" in md and "points predicted" in md
    assert r["within_2se"]["of"] == len(sweep.MEASURED_DARE) + len(sweep.MEASURED_DROP) + len(sweep.MEASURED_DELLA)
    # The deterministic curves: every grid point predicted, a few measured once each, in the report too.
    assert len(r["predicted"]["lowrank"]["mean"]) == len(sweep.LOWRANK_FRACTION)
    assert len(r["predicted"]["bitdelta_bits"]["mean"]) == len(sweep.BITDELTA_BITS) == 9
    lowrank = [pt for pt in r["points"] if pt["family"] == "lowrank"]
    bits = [pt for pt in r["points"] if pt["family"] == "bitdelta_bits"]
    assert [pt["fraction"] for pt in lowrank] == list(sweep.MEASURED_LOWRANK)
    assert [pt["bits"] for pt in bits] == list(sweep.MEASURED_BITS)
    assert all(len(pt["measured_seeds"]) == 1 and pt["within_2se"] is None for pt in lowrank + bits)
    assert "`lowrank:fraction=0.25`" in md and "`bitdelta:magnitude_bits=4`" in md and "- Low rank:" in md


def test_predictions_are_the_closed_forms_of_the_recorded_statistics(swept):
    r = json.loads((swept / "sweep.json").read_text())["pairs"][0]
    st = closed_form.DeltaStatistics(**{k: v for k, v in r["statistics"].items() if k != "data"})
    sat = riemann.Saturation.from_record(r["saturation"])
    for pt in r["points"]:
        if pt["family"] in ("dare", "drop_only"):
            # the quadratic model's mean read through the recorded saturation curves
            args = (st, pt["p"], pt.get("k", 0.0))
            mean, sd = closed_form.dare_moments(*args, rescale=pt["family"] == "dare", saturation=sat)
            quadratic, _ = closed_form.dare_moments(*args, rescale=pt["family"] == "dare")
            assert pt["predicted"] == pytest.approx(float(mean), rel=1e-9)
            assert pt["predicted_sd"] == pytest.approx(float(sd), rel=1e-12)
            curve = r["predicted"][pt["family"]]
            at = curve["p"].index(pt["p"])
            got = (
                curve["quadratic"][at]
                if pt["family"] == "drop_only"
                else curve["quadratic"][at][curve["k"].index(pt["k"])]
            )
            assert got == pytest.approx(float(quadratic), rel=1e-12)
        se = pt["measured_se"]
        if pt["family"] in ("lowrank", "bitdelta_bits"):  # deterministic: one measurement, no standard error
            assert se is None and pt["within_2se"] is None
            continue
        assert pt["within_2se"] == (abs(pt["predicted"] - pt["measured"]) <= 2 * se)
        assert se == pytest.approx(np.std(pt["measured_seeds"], ddof=1) / np.sqrt(3), rel=1e-9)
    alphas = np.asarray(r["expo"]["alpha"])
    np.testing.assert_allclose(r["predicted"]["expo"]["cubic"], closed_form.expo_curve(st, alphas), rtol=1e-12)
    expo = closed_form.expo_curve(st, alphas, saturation=sat)
    np.testing.assert_allclose(r["predicted"]["expo"]["saturated"], expo, rtol=1e-9)
    best = alphas[int(np.argmin(expo))] if expo.min() < 0 else 0.0
    assert r["expo"]["predicted_best_alpha"] == r["predicted"]["expo"]["best_alpha"] == best
    c0, c1, c2 = r["predicted"]["bitdelta"]["coefficients"]
    m = np.asarray(r["bitdelta"]["multiple"])
    np.testing.assert_allclose(r["predicted"]["bitdelta"]["mean"], c0 + c1 * m + c2 * m**2, rtol=1e-12)
    assert r["bitdelta"]["measured_best_multiple"] == m[int(np.argmin(r["bitdelta"]["measured"]))]
    # Low rank and bits: each measured point sits on its curve; low rank's ends where every factor is kept.
    for family, x, grid in (("lowrank", "fraction", "fraction"), ("bitdelta_bits", "bits", "bits")):
        curve = r["predicted"][family]
        for pt in (pt for pt in r["points"] if pt["family"] == family):
            assert pt["predicted"] == curve["mean"][curve[grid].index(pt[x])]
            assert pt["ratio"] == pytest.approx(pt["predicted"] / pt["measured"], rel=1e-12)
    lr = r["predicted"]["lowrank"]
    assert lr["mean"][-1] == lr["first"][-1] == lr["quadratic"][-1] == 0.0
    # Read through the curves (closed_form's tests check the read itself): the plain quadratic is kept
    # beside it, and the two differ where the curves leave the quadratic.
    for family in ("lowrank", "bitdelta_bits"):
        curve = r["predicted"][family]
        assert len(curve["quadratic"]) == len(curve["mean"])
        assert max(abs(a - b) for a, b in zip(curve["mean"], curve["quadratic"])) > 0
    # BitDelta's bits curve at B = 0 is BitDelta itself: the measurement equals the multiple's at m = 1.
    at_zero = next(pt["measured"] for pt in r["points"] if pt["family"] == "bitdelta_bits" and pt["bits"] == 0)
    assert at_zero == pytest.approx(r["bitdelta"]["measured"][r["bitdelta"]["multiple"].index(1.0)], rel=1e-9)
    measured_best = alphas[int(np.argmin(r["expo"]["measured"]))]
    assert r["expo"]["measured_best_alpha"] == (measured_best if min(r["expo"]["measured"]) < 0 else 0.0)


def test_the_allocation_is_measured_against_the_uniform_rate_on_the_same_masks(swept):
    r = json.loads((swept / "sweep.json").read_text())["pairs"][0]
    assert [a["keep"] for a in r["allocation"]] == list(sweep.ALLOCATION_KEEP)
    points = {pt["spec"]: pt["measured_seeds"] for pt in r["points"]}
    for a in r["allocation"]:
        assert a["predicted"] <= a["predicted_uniform"]  # the allocation minimises the prediction
        rates = np.array(list(a["p"].values()))
        assert a["p_range"] == [rates.min(), rates.max()] and 0 <= rates.min() <= rates.max() < 1
        diff = np.subtract(a["allocated"]["measured_seeds"], a["uniform"]["measured_seeds"])
        assert a["difference"] == pytest.approx(diff.mean(), rel=1e-9)
        assert a["allocation_better"] == (diff.mean() < 0)
        # The uniform rate's masks are the main job's and the sweep's own DARE points'.
        spec = f"dare:p={1 - a['keep']:g},k=0"  # ALLOCATION_KEEP's uniform rates are measured DARE points
        np.testing.assert_allclose(a["uniform"]["measured_seeds"], points[spec], rtol=1e-6)
    assert "DARE's drop rate per module" in (swept / "sweep.md").read_text()


def test_measured_points_are_the_main_jobs_measurements(swept, mlp_run):
    # Same seed, same split, same edit keys: the main job's three masks of dare:p=0.99 are the
    # sweep's first three (the sweep measures its points exactly as the main job measures edits);
    # BitDelta (multiple 1) is deterministic and measured alike.
    r = json.loads((swept / "sweep.json").read_text())["pairs"][0]
    (pair,) = results(mlp_run)["pairs"]
    main_job = {e["spec"]: e["measured_seeds"] for e in pair["edits"]}
    ours = {pt["spec"]: pt["measured_seeds"] for pt in r["points"]}
    assert "dare:p=0.99" in main_job and "dare:p=0.99,k=0" in ours  # one edit, two spellings
    np.testing.assert_allclose(ours["dare:p=0.99,k=0"], main_job["dare:p=0.99"][:3], rtol=1e-6)
    at_one = r["bitdelta"]["measured"][r["bitdelta"]["multiple"].index(1.0)]
    assert at_one == pytest.approx(main_job["bitdelta"][0], rel=1e-6)


def test_sweep_refuses_bad_arguments(tmp_path, capsys):
    assert main(["sweep", "--pair", "mlp-teacher", "--seeds", "1", "--out", str(tmp_path / "a")]) == 2
    assert "--seeds 1" in capsys.readouterr().err
    assert main(["sweep", "--pair", "nope", "--out", str(tmp_path / "b")]) == 2
    assert "nope" in capsys.readouterr().err
