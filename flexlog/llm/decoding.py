"""Turning a model's output into a label, deterministically where the backend allows it.

Preferred: compare the log-probabilities of the two label words after the prompt (or let the
server constrain the answer to the two choices). Otherwise the paper's ladder: sample at
temperature 0.1, retry unparsable answers at 0.2, 0.4, ... 1.0, and answer normal if nothing
parses. Every decision records the path that decided it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

#: First try, then up to five retries, as in the FlexLog paper.
TEMPERATURE_LADDER = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True, slots=True)
class LabelDecision:
    """One answer of the LLM voter.

    ``path`` is "logprobs" (label log-probabilities compared), "choice" (server-side
    constrained choice), "sampled@T" / "retry@T" (the ladder at temperature T), "default"
    (nothing parsed: normal, as the paper does) or "error" (the backend failed; the voter
    abstains from the vote).
    """

    label: int
    path: str
    logprobs: tuple[float, float] | None = None
    raw: str | None = None

    def to_json(self) -> dict:
        return {"label": self.label, "path": self.path, "logprobs": self.logprobs, "raw": self.raw}


def by_logprobs(lp_normal: float, lp_anomalous: float) -> LabelDecision:
    """Anomalous only when its log-probability is strictly higher (a tie is normal)."""
    return LabelDecision(int(lp_anomalous > lp_normal), "logprobs", (lp_normal, lp_anomalous))


def with_threshold(decision: LabelDecision, threshold: float) -> LabelDecision:
    """Re-decide a log-probability decision as anomalous when
    ``lp(anomalous) - lp(normal) > threshold``; other paths are returned unchanged."""
    if decision.path != "logprobs" or decision.logprobs is None:
        return decision
    lp_normal, lp_anomalous = decision.logprobs
    return replace(decision, label=int(lp_anomalous - lp_normal > threshold))


def ladder(
    n: int,
    generate: Callable[[Sequence[int], float], Sequence[str]],
    parse: Callable[[str], int | None],
    temperatures: Sequence[float] = TEMPERATURE_LADDER,
) -> list[LabelDecision]:
    """Decide ``n`` prompts by sampling: ``generate(indices, temperature)`` returns one text
    per index; unparsable ones go to the next temperature."""
    decisions: list[LabelDecision | None] = [None] * n
    pending = list(range(n))
    for step, temperature in enumerate(temperatures):
        if not pending:
            break
        texts = generate(pending, temperature)
        if len(texts) != len(pending):
            raise ValueError(f"backend returned {len(texts)} answers for {len(pending)} prompts")
        path = f"{'sampled' if step == 0 else 'retry'}@{temperature:g}"
        still = []
        for i, text in zip(pending, texts, strict=True):
            label = parse(text)
            if label is None:
                still.append(i)
            else:
                decisions[i] = LabelDecision(label, path, raw=text)
        pending = still
    for i in pending:
        decisions[i] = LabelDecision(0, "default")
    return decisions  # type: ignore[return-value]
