from lethe.tasks.settings import GateSettings
from lethe.tasks.steps.gates import check_gates, forget_limit

GATES = GateSettings(
    forget_acc_max=0.1,
    anchor_confusion_max=0.2,
    held_out_forget_acc_max=0.1,
    retain_ratio_min=0.95,
    kid_max_ratio=1.1,
    recovery_acc_max=0.2,
)


def scored(forgotten, accuracy, retain, kid):
    return {"forgotten": forgotten, "accuracy": accuracy, "retain_acc_mean": retain, "kid": kid}


def test_a_clean_step_passes():
    before = scored(["bag"], {"bag": 0.9}, 0.80, 100.0)
    assert check_gates(scored(["bag"], {"bag": 0.05}, 0.79, 105.0), before, GATES) == []


def test_each_gate_names_its_reason():
    before = scored(["bag", "coat"], {"bag": 0.9, "coat": 0.0}, 0.80, 100.0)
    after = scored(["bag", "coat"], {"bag": 0.3, "coat": 0.2}, 0.70, 120.0)
    reasons = check_gates(after, before, GATES)
    assert len(reasons) == 4
    assert "forget accuracy of bag is 0.300" in reasons[0] and "forget accuracy of coat" in reasons[1]
    assert "retained accuracy fell to 0.875" in reasons[2]
    assert "KID" in reasons[3]


def test_held_out_paraphrases_of_a_forgotten_concept_are_gated_and_a_missing_kid_is_not():
    before = scored(["bag"], {"bag": 0.9, "coat": 0.8}, 0.80, float("nan"))
    after = scored(["bag"], {"bag": 0.0, "coat": 0.8}, 0.80, float("nan"))
    after["held_out_accuracy"] = {"bag": 0.25, "coat": 0.9}  # coat is retained: its paraphrases may stay
    reasons = check_gates(after, before, GATES)
    assert reasons == ["held-out paraphrases of bag are still judged as it on 0.250 > 0.1"]
    after["held_out_accuracy"]["bag"] = 0.05
    assert check_gates(after, before, GATES) == []


def test_a_concept_the_recovery_attack_brings_back_is_gated():
    before = scored(["bag"], {"bag": 0.9}, 0.80, 100.0)
    after = scored(["bag", "coat"], {"bag": 0.0, "coat": 0.0}, 0.80, 100.0)
    after["recovery"] = {"bag": 0.35, "coat": 0.2}  # coat at the threshold passes
    assert check_gates(after, before, GATES) == [
        "the recovery attack brings bag back: its attacked samples are judged as it on 0.350 > 0.2"
    ]


def test_a_concept_may_stay_as_recognisable_as_its_anchor_is_confused_with_it_up_to_a_cap():
    before = scored(["shirt", "bag"], {"shirt": 0.9, "bag": 0.9}, 0.80, 100.0)
    after = scored(["shirt", "bag"], {"shirt": 0.15, "bag": 0.15}, 0.80, 100.0)
    # tshirt (shirt's anchor) judged shirt on 5 of 32 samples; bag's anchor never judged bag
    confusion = {"shirt": (5, 32), "bag": (0, 32)}
    assert check_gates(after, before, GATES, confusion) == ["forget accuracy of bag is 0.150 > 0.1"]
    after["accuracy"]["shirt"] = 0.16
    assert check_gates(after, before, GATES, confusion)[0] == (
        "forget accuracy of shirt is 0.160 > 0.156 (its anchor's confusion 5/32, at most 0.2)"
    )
    assert forget_limit(GATES, (16, 32)) == 0.2  # capped
    assert forget_limit(GATES, None) == forget_limit(GATES, (0, 0)) == forget_limit(GATES, (1, 32)) == 0.1
    assert check_gates(after, before, GATES) == [  # no confusion measured: the flat gate, as before
        "forget accuracy of shirt is 0.160 > 0.1",
        "forget accuracy of bag is 0.150 > 0.1",
    ]
