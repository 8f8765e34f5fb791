"""The claim checks read the records and reach the verdict the numbers support."""

from analysis.study import claims


def rec(spec, name, params, measured, measured_class, **estimates):
    return {
        "spec": spec,
        "name": name,
        "params": params,
        "measured": measured,
        "class": {"measured": measured_class},
        "estimates": estimates,
    }


def results(edits, pair="p"):
    return {"pairs": [{"pair": {"name": pair}, "edits": edits}], "summary": {"estimators": {}}}


def test_dare_claim_holds_up_to_09_and_reports_the_high_p_failure():
    edits = [
        rec("dare:p=0.5", "dare", {"p": 0.5}, 0.001, "competitive", **{"first-order": 0.0}),
        rec("dare:p=0.9", "dare", {"p": 0.9}, 0.002, "competitive", **{"first-order": 0.0}),
        rec("dare:p=0.99", "dare", {"p": 0.99}, 3.0, "decreased", **{"first-order": 0.01}),
        rec("dare:p=0.5,k=0.5", "dare", {"p": 0.5, "k": 0.5}, 9.0, "decreased"),
    ]  # not plain DARE: ignored
    c = claims.dare_competitive(results(edits))
    assert c["verdict"] == "holds"
    assert "2 of 2" in c["evidence"] and "p=0.99: measured ΔL +3" in c["evidence"]
    edits[1] = rec("dare:p=0.9", "dare", {"p": 0.9}, 0.5, "decreased", **{"first-order": 0.0})
    assert claims.dare_competitive(results(edits))["verdict"] == "partly holds"


def test_expo_direction_compares_the_gradient_sign_with_the_best_alpha():
    # ⟨ΔW, g⟩ = first-order / α = −1 < 0 predicts extrapolation; the best measured α is +0.2.
    edits = [
        rec("expo:alpha=-0.2", "expo", {"alpha": -0.2}, 0.05, "decreased", **{"first-order": 0.2}),
        rec("expo:alpha=0.2", "expo", {"alpha": 0.2}, -0.05, "improved", **{"first-order": -0.2}),
    ]
    assert claims.expo_direction(results(edits))["verdict"] == "holds"
    edits[1]["measured"], edits[0]["measured"] = 0.1, -0.01
    assert claims.expo_direction(results(edits))["verdict"] == "does not hold"


def test_expo_direction_reads_the_line_profile_when_present():
    edits = [rec("expo:alpha=0.2", "expo", {"alpha": 0.2}, 0.3, "decreased", **{"first-order": -0.2})]
    res = results(edits)
    res["pairs"][0]["pair"].update(
        loss_post=1.0, line_profile={"t": [0.9, 1.0, 1.1, 1.2], "loss": [1.2, 1.0, 0.9, 1.1]}
    )
    c = claims.expo_direction(res)
    assert c["verdict"] == "holds" and "α = +0.1" in c["evidence"]
    res["pairs"][0]["pair"]["line_profile"]["loss"] = [1.2, 1.0, 1.05, 1.1]
    c = claims.expo_direction(res)
    assert c["verdict"] == "not tested" and "neither direction helps" in c["evidence"]


def test_biased_product_claim_needs_first_order_wrong_and_measured_up():
    e = rec(
        "biased_product:k=1.5",
        "biased_product",
        {"k": 1.5},
        2.0,
        "decreased",
        **{"first-order": -0.3, "second-order": 1.0},
    )
    assert claims.biased_product(results([e]))["verdict"] == "holds"
    e["measured"] = -0.1
    assert claims.biased_product(results([e]))["verdict"] == "does not hold"


def test_claims_without_their_edits_are_skipped():
    assert claims.check(results([rec("lowrank:rank=2", "lowrank", {"rank": 2}, 0.1, "decreased")])) == []
