"""Quality gates: a new version may become production only if it forgets (its concepts' own prompts and, where
the concept file has them, their held-out paraphrases), stays forgotten under the recovery attack, retains and
still looks right.

A forgotten concept is steered onto its anchor, so it can be judged as itself no less often than its anchor's
own samples are (the anchor's confusion, measured on the parent when the request ran). Its forget gate is
therefore `forget_acc_max` or that confusion, whichever is higher, but never above `anchor_confusion_max`: a
fold that draws shirt exactly as its anchor tshirt, which the judge names shirt 16% of the time, is not
rejected for it (DECISIONS.md, "Per-concept forget gates").
"""

from __future__ import annotations

from lethe.tasks.settings import GateSettings


def forget_limit(gates: GateSettings, confusion: tuple[int, int] | None) -> float:
    """The forget accuracy a concept may keep: `confusion` = (k, n), k of its anchor's n samples judged as the
    concept when its request ran (None: not measured, e.g. an anchor given as prompts)."""
    if not confusion or not confusion[1]:
        return gates.forget_acc_max
    return max(gates.forget_acc_max, min(gates.anchor_confusion_max, confusion[0] / confusion[1]))


def check_gates(
    after: dict, before: dict, gates: GateSettings, confusion: dict[str, tuple[int, int]] | None = None
) -> list[str]:
    """Reasons the version fails (empty = passes). `before` is the parent scored on the same retained set;
    `confusion`: per forgotten concept, its anchor's confusion (`forget_limit`); a concept without one is held to
    `forget_acc_max`."""
    reasons = []
    for concept in after["forgotten"]:
        acc, limit = after["accuracy"][concept], forget_limit(gates, (confusion or {}).get(concept))
        if acc > limit:
            why = ""
            if limit > gates.forget_acc_max:
                k, n = confusion[concept]
                why = f" (its anchor's confusion {k}/{n}, at most {gates.anchor_confusion_max})"
            reasons.append(f"forget accuracy of {concept} is {acc:.3f} > {limit:.3g}{why}")
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
