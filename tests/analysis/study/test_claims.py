"""The claim checks read the records and reach the verdict the numbers support, for the loss and
for the accuracy separately. Every case is a small synthetic results dict built here."""

import pytest

from analysis.study import claims

TOL = 0.1  # the pair's fixed loss tolerance in every case below
ACC_TOL = 0.02


def cls(v, tol):
    return "decreased" if v > tol else "improved" if v < -tol else "competitive"


def acc_cls(d):
    """Accuracy classes: a rise is an improvement."""
    return "improved" if d > ACC_TOL else "decreased" if d < -ACC_TOL else "competitive"


def rec(spec, measured, *, seeds=None, stderr=0.0, acc=None, acc_seeds=None, **estimates):
    """An edit record in the suite's format; the class of every value comes from the fixed
    tolerances, as the suite gives it."""
    name, _, rest = spec.partition(":")
    params = {}
    for kv in filter(None, rest.split(",")):
        k, v = kv.split("=")
        params[k] = {"true": True, "false": False}[v] if v in ("true", "false") else float(v)
    seeds = [measured] if seeds is None else seeds
    mean = sum(seeds) / len(seeds)
    std = (sum((s - mean) ** 2 for s in seeds) / (len(seeds) - 1)) ** 0.5 if len(seeds) > 1 else 0.0
    return {
        "name": name,
        "spec": spec,
        "params": params,
        "paper_class": "competitive",
        "estimates": estimates,
        "class": {**{n: cls(v, TOL) for n, v in estimates.items()}, "measured": cls(mean, TOL)},
        "measured": mean,
        "measured_seeds": seeds,
        "measured_std": std,
        "tolerance": TOL,
        "stderr": {"measured": stderr},
        "accuracy": None if acc is None else 0.8 + acc,
        "accuracy_seeds": None if acc is None else [0.8 + a for a in (acc_seeds or [acc])],
        "accuracy_delta": acc,
        "class_accuracy": None if acc is None else acc_cls(acc),
    }


def pair(edits, name="p", **checks):
    return {
        "pair": {
            "name": name,
            "tolerance": {"value": TOL, "gain_part": TOL, "noise_part": 0.0, "t_quantile": 2.0, "dof": 7, "n_test": 8},
            "accuracy_tolerance": {"value": ACC_TOL, "gain_part": ACC_TOL, "noise_part": 0.0},
            "loss_pre": 2.0,
            "loss_post": 1.0,
            "gain": 1.0,
            "accuracy_pre": 0.5,
            "accuracy_post": 0.8,
            **checks,
        },
        "edits": edits,
        "agreement": {},
    }


def results(*pairs):
    return {"pairs": list(pairs)}


def one(edits, **checks):
    return results(pair(edits, **checks))


def test_the_records_built_here_classify_accuracy_with_its_own_sign():
    r = rec("dare:p=0.5", 0.0, acc=-0.05)
    assert r["class_accuracy"] == "decreased" and rec("dare:p=0.5", 0.0, acc=0.05)["class_accuracy"] == "improved"


def test_every_claim_has_a_source_and_a_loss_part_and_names_its_verdicts():
    edits = [
        rec("dare:p=0.5", 0.01, acc=0.0),
        rec("dare:p=0.5,k=-1", 0.01, acc=0.0),
        rec("dare:p=0.5,k=0.5", 0.01, acc=0.0),
        rec("bitdelta", 0.5, acc=-0.1, riemann=0.4),
        rec("bitdelta:magnitude_bits=4", 0.0, acc=0.0),
        rec("biased_sign:k=1.5", 0.0, acc=0.0),
        rec("biased_product:k=1.5", 2.0, acc=-0.5, **{"first-order": -0.3}),
        rec("expo:alpha=0.2", -0.3, acc=0.05, **{"first-order": -0.2}),
    ]
    res = one(edits)
    res["pairs"][0]["agreement"] = {"riemann": {"spearman": 0.9}, "first-order": {"spearman": 0.5}}
    res["pairs"][0]["accuracy_correlation"] = {"spearman": -0.8, "ci95": [-0.95, -0.4], "n": 8}
    out = claims.check(res)
    assert len(out) == len(claims.CHECKS)
    sources = [c["source"] for c in out]
    assert sources == sorted(sources)  # the paper's first ("paper" < "project")
    assert sources.count("project") == len(claims.PROJECT_CHECKS)
    for c in out:
        assert c["verdict"] == c["loss"]["verdict"] == "holds", c
        assert c["accuracy"] is None or c["accuracy"]["verdict"] == "holds", c


def test_dare_holds_partly_holds_and_fails_by_the_measured_class():
    edits = [
        rec("dare:p=0.5", 0.001, **{"first-order": 0.0}),
        rec("dare:p=0.9", 0.002, **{"first-order": 0.0}),
        rec("dare:p=0.99", 3.0, **{"first-order": 0.01, "second-order": 2.5}),
        rec("dare:p=0.5,k=0.5", 9.0),  # the k-extension: another claim
        rec("dare:p=0.5,rescale=false", 9.0),  # not rescaled: no claim
    ]
    c = claims.dare_competitive(one(edits))
    assert c["source"] == "paper" and c["loss"]["verdict"] == "holds" and c["accuracy"] is None
    assert "2 of 2" in c["loss"]["evidence"] and "`dare:p=0.99`: ΔL +3 (decreased)" in c["loss"]["evidence"]
    edits[1] = rec("dare:p=0.9", 0.5)
    c = claims.dare_competitive(one(edits))
    assert c["verdict"] == "partly holds" and "`p` `dare:p=0.9`: ΔL +0.5 (decreased)" in c["loss"]["evidence"]
    edits[0] = rec("dare:p=0.5", -0.5)
    assert claims.dare_competitive(one(edits))["verdict"] == "does not hold"


def test_dare_accuracy_is_judged_apart_from_the_loss():
    edits = [rec("dare:p=0.5", 0.01, acc=-0.1), rec("dare:p=0.9", 0.02, acc=0.0)]
    c = claims.dare_competitive(one(edits))
    assert c["loss"]["verdict"] == "holds" and c["accuracy"]["verdict"] == "partly holds"
    assert "Δacc -0.1 (decreased)" in c["accuracy"]["evidence"]
    edits = [rec("dare:p=0.5", 0.5, acc=0.0)]
    c = claims.dare_competitive(one(edits))
    assert c["loss"]["verdict"] == "does not hold" and c["accuracy"]["verdict"] == "holds"


def test_only_p_above_the_grid_is_no_claim():
    assert claims.dare_competitive(one([rec("dare:p=0.99", 3.0)])) is None


def test_a_mean_over_seeds_that_hides_a_bad_draw_is_said():
    e = rec("dare:p=0.7", 0.0, seeds=[-0.02, -0.03, 0.12])
    c = claims.dare_competitive(one([e]))
    assert c["verdict"] == "holds"
    assert "not in every single draw" in c["loss"]["evidence"] and "1 decreased" in c["loss"]["evidence"]


def test_negative_k_is_judged_over_the_whole_paper_grid():
    edits = [rec(f"dare:p={p},k=-1", 0.01) for p in (0.1, 0.3, 0.5, 0.7)]
    edits.append(rec("dare:p=0.9,k=-1", 1.5, acc=-0.3))
    edits.append(rec("dare:p=0.99,k=-1", 9.0))
    c = claims.dare_negative_k(one(edits))
    assert c["verdict"] == "partly holds"
    assert "4 of 5" in c["loss"]["evidence"] and "`dare:p=0.9,k=-1`: ΔL +1.5" in c["loss"]["evidence"]
    assert "Beyond p = 0.9" in c["loss"]["evidence"] and "`dare:p=0.99,k=-1`" in c["loss"]["evidence"]
    assert c["accuracy"]["verdict"] == "does not hold" and "judged on a single edit" in c["accuracy"]["evidence"]
    assert claims.dare_competitive(one(edits)) is None and claims.dare_positive_k(one(edits)) is None


def test_positive_k_extension():
    c = claims.dare_positive_k(one([rec("dare:p=0.5,k=0.5", 0.0), rec("dare:p=0.5,k=1.5", 0.3)]))
    assert c["verdict"] == "partly holds"


def test_bitdelta_needs_the_decreased_class_not_just_a_positive_change():
    # Positive term and positive change, but both within the tolerance: competitive, not decreased.
    e = rec("bitdelta", 0.05, acc=-0.01, riemann=0.04)
    c = claims.bitdelta_decreased(one([e]))
    assert c["loss"]["verdict"] == "does not hold" and "(competitive)" in c["loss"]["evidence"]
    assert c["accuracy"]["verdict"] == "does not hold"
    e = rec("bitdelta", 0.5, acc=-0.1, riemann=0.4)
    c = claims.bitdelta_decreased(results(pair([e], name="a"), pair([rec("bitdelta", 0.05, riemann=0.3)], name="b")))
    assert c["loss"]["verdict"] == "partly holds" and c["accuracy"]["verdict"] == "holds"


def test_bitdelta_counts_the_term_beside_the_verdict():
    c = claims.bitdelta_decreased(one([rec("bitdelta", 0.5, riemann=0.05)]))
    assert c["verdict"] == "holds" and "term +0.05 (competitive)" in c["loss"]["evidence"]
    assert "classified decreased on 0 of 1" in c["loss"]["evidence"]
    c = claims.bitdelta_decreased(one([rec("bitdelta", 0.5)]))
    assert c["verdict"] == "holds" and "not computed on 1 of 1" in c["loss"]["evidence"]


def test_bitdelta_four_bits_matches_or_beats():
    edits = [rec("bitdelta:magnitude_bits=4", -0.3, acc=0.0), rec("bitdelta:magnitude_bits=1", 2.0)]
    c = claims.bitdelta_four_bits(one(edits))
    assert c["loss"]["verdict"] == "holds" and c["accuracy"]["verdict"] == "holds"
    edits[0] = rec("bitdelta:magnitude_bits=4", 0.3, acc=-0.1)
    c = claims.bitdelta_four_bits(one(edits))
    assert c["loss"]["verdict"] == "does not hold" and c["accuracy"]["verdict"] == "does not hold"


def expo(alpha, measured, slope=-1.0, acc=None):
    return rec(f"expo:alpha={alpha}", measured, acc=acc, **{"first-order": slope * alpha})


def test_expo_holds_when_the_best_alpha_improves_on_the_predicted_side():
    # ⟨ΔW, g⟩ = −1 < 0 predicts extrapolation; the best measured α is +0.2, improved.
    edits = [expo(-0.2, 0.05, acc=-0.05), expo(0.2, -0.3, acc=0.05)]
    c = claims.expo_direction(one(edits))
    assert c["loss"]["verdict"] == "holds" and c["accuracy"]["verdict"] == "holds"
    assert "predicts extrapolation" in c["loss"]["evidence"] and "best α = +0.2" in c["loss"]["evidence"]
    assert "judged on a single pair" in c["loss"]["evidence"]


def test_expo_fails_when_the_best_alpha_is_on_the_other_side():
    edits = [expo(-0.2, -0.3, acc=0.05), expo(0.2, 0.2, acc=-0.05)]
    c = claims.expo_direction(one(edits))
    assert c["loss"]["verdict"] == "does not hold" and c["accuracy"]["verdict"] == "does not hold"


def test_expo_with_no_improving_edit_is_a_failed_prediction_not_a_skip():
    # The best measured change is negative but inside the tolerance: no direction helps.
    edits = [expo(-0.2, 0.3), expo(0.2, -0.05)]
    c = claims.expo_direction(one(edits))
    assert c["verdict"] == "does not hold" and "no direction helps" in c["loss"]["evidence"]
    # The best is α = 0 itself.
    edits = [expo(-0.2, 0.3), expo(0, 0.0), expo(0.2, 0.2)]
    c = claims.expo_direction(one(edits))
    assert c["verdict"] == "does not hold" and "best α = +0" in c["loss"]["evidence"]


def test_expo_counts_pairs_and_reports_the_line_profile_unjudged():
    good = pair([expo(0.2, -0.3)], name="a", line_profile={"t": [0.9, 1.0, 1.1], "loss": [1.2, 1.0, 0.9]})
    flat = pair([expo(0.2, 0.01)], name="b")
    c = claims.expo_direction(results(good, flat))
    assert c["verdict"] == "partly holds" and "1 of 2" in c["loss"]["evidence"]
    assert "line profile lowest at α = +0.1 (ΔL -0.1, not judged)" in c["loss"]["evidence"]
    assert c["accuracy"] is None


def test_biased_product_must_rise_beyond_tolerance_and_noise():
    e = rec("biased_product:k=1.5", 2.0, stderr=0.1, acc=-0.5, **{"first-order": -0.3, "second-order": 1.0})
    c = claims.biased_product(one([e, rec("biased_product:k=0.5", 1.0, **{"first-order": 0.2})]))
    assert c["loss"]["verdict"] == "holds" and c["accuracy"]["verdict"] == "holds"
    assert "2× the post-training gain" in c["loss"]["evidence"]
    # Above the tolerance but within two standard errors: not beyond noise.
    e = rec("biased_product:k=1.5", 0.15, stderr=0.1, **{"first-order": -0.3})
    assert claims.biased_product(one([e]))["verdict"] == "does not hold"
    # Positive but within the tolerance.
    e = rec("biased_product:k=1.5", 0.05, **{"first-order": -0.3})
    assert claims.biased_product(one([e]))["verdict"] == "does not hold"


def test_biased_within_the_seed_spread_is_noise():
    # A random edit whose mean rise clears the tolerance but not twice the spread over seeds.
    e = rec("biased_product:k=1.5", 0.0, seeds=[-0.3, 0.1, 0.8], **{"first-order": -0.3})
    assert e["measured"] > TOL
    assert claims.biased_product(one([e]))["verdict"] == "does not hold"


def test_biased_accuracy_fall_within_the_seed_spread_is_noise():
    e = rec("biased_product:k=1.5", 2.0, acc=-0.05, acc_seeds=[0.05, -0.05, -0.15], **{"first-order": -0.3})
    c = claims.biased_product(one([e]))
    assert c["loss"]["verdict"] == "holds" and c["accuracy"]["verdict"] == "does not hold"


def test_first_order_miss_is_the_projects_claim():
    e = rec("biased_product:k=1.5", 2.0, **{"first-order": -0.3})
    c = claims.first_order_misses_biased_product(one([e, rec("biased_product:k=0.5", 2.0, **{"first-order": 0.3})]))
    assert c["source"] == "project" and c["verdict"] == "holds" and "1 of 1" in c["loss"]["evidence"]
    e = rec("biased_product:k=1.5", 2.0, **{"first-order": 0.3})
    assert claims.first_order_misses_biased_product(one([e]))["verdict"] == "does not hold"


def test_biased_sign_stays_competitive():
    edits = [rec("biased_sign:k=0.5", 0.02, acc=0.0), rec("biased_sign:k=1.5", 0.4, acc=-0.01)]
    c = claims.biased_sign(one(edits))
    assert c["loss"]["verdict"] == "partly holds" and c["accuracy"]["verdict"] == "holds"


def test_a_tolerance_wider_than_the_typical_change_is_said():
    edits = [rec("dare:p=0.5", 0.01), rec("dare:p=0.9", 0.05), rec("lowrank:fraction=0.1", 0.5)]
    c = claims.dare_competitive(one(edits))
    assert c["verdict"] == "holds" and "at least the median |ΔL| (0.05)" in c["loss"]["evidence"]
    acc = [
        rec("dare:p=0.5", 0.0, acc=0.01),
        rec("dare:p=0.9", 0.0, acc=0.0),
        rec("lowrank:fraction=0.1", 0.5, acc=-0.3),
    ]
    c = claims.dare_competitive(one(acc, accuracy_tolerance=0.02))  # a plain number is read too
    assert "the tolerance 0.02 is at least the median |Δacc| (0.01)" in c["accuracy"]["evidence"]
    edits[0], edits[1] = rec("dare:p=0.5", 0.5), rec("dare:p=0.9", 0.05)
    assert "median" not in claims.dare_competitive(one(edits))["loss"]["evidence"]
    # Where the claim asks for "decreased", the note states the fact without the caveat.
    edits = [rec("bitdelta", 0.5), rec("dare:p=0.5", 0.01), rec("dare:p=0.9", 0.02)]
    ev = claims.bitdelta_decreased(one(edits))["loss"]["evidence"]
    assert "competitive there by construction" in ev and "says little" not in ev


def test_computed_term_tracks_per_pair_and_names_ties():
    a, b = pair([], name="a"), pair([], name="b")
    a["agreement"] = {"riemann": {"spearman": 0.9}, "first-order": {"spearman": 0.5}}
    b["agreement"] = {"riemann": {"spearman": 0.601}, "first-order": {"spearman": 0.6}}
    c = claims.computed_term_tracks(results(a, b))
    assert c["source"] == "project" and c["verdict"] == "holds" and c["accuracy"] is None
    assert "ties in effect" in c["loss"]["evidence"] and "`b`" in c["loss"]["evidence"]
    b["agreement"]["riemann"]["spearman"] = 0.3
    assert claims.computed_term_tracks(results(a, b))["verdict"] == "partly holds"


def test_loss_tracks_accuracy_needs_an_interval_below_zero():
    a, b = pair([], name="a"), pair([], name="b")
    a["accuracy_correlation"] = {"spearman": -0.8, "ci95": [-0.9, -0.5], "n": 20}
    b["accuracy_correlation"] = {"spearman": -0.3, "ci95": [-0.7, 0.2], "n": 20}
    c = claims.loss_tracks_accuracy(results(a, b))
    assert c["source"] == "project" and c["verdict"] == "partly holds"
    assert "[-0.9, -0.5], 20 edits" in c["loss"]["evidence"]
    # The suite's own key names, and a pair without an interval, which cannot qualify.
    a["accuracy_correlation"] = {"spearman": -0.8, "spearman_ci95": [-0.9, -0.5], "edits": 20}
    b["accuracy_correlation"] = {"spearman": -0.9}
    c = claims.loss_tracks_accuracy(results(a, b))
    assert c["verdict"] == "partly holds" and "[nan, nan]" in c["loss"]["evidence"]
    assert claims.loss_tracks_accuracy(results(pair([]))) is None


def test_claims_without_their_edits_are_skipped():
    assert claims.check(one([rec("lowrank:rank=2", 0.5)])) == []


@pytest.mark.parametrize("name", ["dare", "bitdelta", "expo"])
def test_param_fills_the_registry_defaults(name):
    r = {"name": name, "params": {"p": 0.3}}
    assert claims.param(r, "p") == 0.3
    assert claims.param(r, "k") == (0.0 if name == "dare" else None)
    assert claims.param(r, "rescale") == (True if name == "dare" else None)
    assert claims.param(r, "magnitude_bits") == (0 if name == "bitdelta" else None)
