"""The escalation ladder: what each attempt of a request changes, decided before the attempt runs.

Attempt 1 of a ladder runs the request as asked (a person's retry may have set its anchor or steps). Each later
attempt adds the next rung of `escalation.ladder` to the previous attempt's settings, so the k-th attempt is the
first with k-1 changes, in the declared order:

- `anchor`: the automatic anchor again, never one an earlier attempt of this ladder tried (so the next one by the
  anchor rule's measured confusion). Requests whose anchor is fixed (by the request or a retry) skip this rung.
- `recovery`: adversarial training against the recovery attack (`train.adversarial.rounds` set to
  `escalation.adversarial_rounds`), for the recovery gate. Its rows exist for class-conditional models only, so
  a text-to-image request skips this rung.
- `steps`: `train.steps` times `escalation.steps_factor`.
- `intensity`: the new adapter's ODE horizon raised to `escalation.intensity`.

The plan depends only on the request, its attempt log and the settings, so a batch killed mid-ladder recomputes
the same plan for the attempt it resumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lethe.tasks.settings import EscalationSettings

CHANGES = {
    "anchor": "the next automatic anchor (earlier attempts' anchors excluded)",
    "steps": "training steps x{factor:g}",
    "recovery": "adversarial training against the recovery attack ({rounds} rounds)",
    "intensity": "ODE horizon (intensity) {intensity:g}",
}


@dataclass(frozen=True)
class AttemptPlan:
    attempt: int  # the request's attempt number (over all its ladders)
    rung: int  # 0 = as asked; k = the first k rungs of the ladder applied
    anchor: str | None  # a fixed anchor, or None for the automatic rule
    avoid: tuple[str, ...]  # anchors the automatic rule must not pick again
    steps: int
    intensity: float
    adversarial_rounds: int  # train.adversarial.rounds of this attempt
    changes: tuple[str, ...]  # the rungs applied, in order
    why: str  # one line: what this attempt changes and why it runs

    def tags(self) -> dict[str, str]:
        return {
            "attempt": str(self.attempt),
            "attempt_rung": str(self.rung),
            "attempt_changes": ",".join(self.changes),
            "attempt_why": self.why,
            "attempt_steps": str(self.steps),
            "attempt_intensity": f"{self.intensity:g}",
            "attempt_adversarial_rounds": str(self.adversarial_rounds),
        }


def rungs_for(anchor_fixed: bool, ladder: list[str], hardenable: bool) -> list[str]:
    """The ladder a request climbs: the anchor rung only where the anchor is the automatic rule's, the recovery
    rung only where adversarial rows exist for the model (`hardenable`: class-conditional)."""
    return [r for r in ladder if not (r == "anchor" and anchor_fixed) and not (r == "recovery" and not hardenable)]


def max_attempts(anchor_fixed: bool, escalation: EscalationSettings, hardenable: bool) -> int:
    """How many attempts a ladder may take: the setting, and no more than one per change available."""
    return min(escalation.attempts, 1 + len(rungs_for(anchor_fixed, escalation.ladder, hardenable)))


def plan_attempt(
    attempt: int,
    ladder_start: int,
    anchor: str | None,
    overrides: dict,
    earlier_anchors: list[str],
    steps: int,
    intensity: float,
    escalation: EscalationSettings,
    *,
    rounds: int,
    hardenable: bool,
) -> AttemptPlan:
    """The plan of `attempt`, on a ladder that began at `ladder_start`, for a request with `anchor` (None:
    automatic) and a person's `overrides`; `earlier_anchors` are what this ladder's earlier attempts used;
    `steps`, `intensity` and `rounds` are the settings' own (train.steps, adapter.intensity,
    train.adversarial.rounds); `hardenable`: whether the model has adversarial rows (the recovery rung)."""
    anchor = overrides.get("anchor", anchor)
    steps = int(overrides.get("steps", steps))
    rung = attempt - ladder_start
    rungs = rungs_for(anchor is not None, escalation.ladder, hardenable)
    if rung < 0 or rung > len(rungs):
        raise ValueError(f"attempt {attempt} is beyond this request's ladder ({len(rungs)} rungs from {ladder_start})")
    changes = tuple(rungs[:rung])
    avoid: tuple[str, ...] = ()
    if "anchor" in changes:
        avoid = tuple(dict.fromkeys(a for a in earlier_anchors if a))
    if "steps" in changes:
        steps = int(round(steps * escalation.steps_factor))
    if "intensity" in changes:
        intensity = escalation.intensity
    if "recovery" in changes:
        rounds = max(rounds, escalation.adversarial_rounds)
    if rung == 0:
        why = "as asked" + (f" (a person's retry: {overrides})" if overrides else "")
    else:
        last = changes[-1]
        why = f"attempt {attempt - 1} failed its gates; adds " + CHANGES[last].format(
            factor=escalation.steps_factor, intensity=escalation.intensity, rounds=escalation.adversarial_rounds
        )
    return AttemptPlan(attempt, rung, anchor, avoid, steps, intensity, rounds, changes, why)
