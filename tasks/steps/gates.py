"""Quality gates: a new version may become production only if it forgets (its concepts' own prompts and, where
the concept file has them, their held-out paraphrases), stays forgotten under the recovery attack, retains and
still looks right."""

from __future__ import annotations

from lethe.tasks.settings import GateSettings


def check_gates(after: dict, before: dict, gates: GateSettings) -> list[str]:
    """Reasons the version fails (empty = passes). `before` is the parent scored on the same retained set."""
    reasons = []
    for concept in after["forgotten"]:
        acc = after["accuracy"][concept]
        if acc > gates.forget_acc_max:
            reasons.append(f"forget accuracy of {concept} is {acc:.3f} > {gates.forget_acc_max}")
    for concept, acc in after.get("held_out_accuracy", {}).items():
        if concept in after["forgotten"] and acc > gates.held_out_forget_acc_max:
            reasons.append(
                f"held-out paraphrases of {concept} are still judged as it on {acc:.3f} > "
                f"{gates.held_out_forget_acc_max}"
            )
    for concept, acc in after.get("recovery", {}).items():
        if acc > gates.recovery_acc_max:
            reasons.append(
                f"the recovery attack brings {concept} back: its attacked samples are judged as it on {acc:.3f} > "
                f"{gates.recovery_acc_max}"
            )
    ratio = after["retain_acc_mean"] / max(before["retain_acc_mean"], 1e-9)
    if ratio < gates.retain_ratio_min:
        reasons.append(
            f"retained accuracy fell to {ratio:.3f} of the parent's "
            f"({before['retain_acc_mean']:.3f} -> {after['retain_acc_mean']:.3f}) "
            f"< {gates.retain_ratio_min}"
        )
    if after["kid"] > gates.kid_max_ratio * max(before["kid"], 0.0):  # NaN (no real images): no KID gate
        reasons.append(
            f"KID on retained concepts rose from {before['kid']:.4f} to {after['kid']:.4f}, "
            f"more than {gates.kid_max_ratio}x the parent's"
        )
    return reasons
