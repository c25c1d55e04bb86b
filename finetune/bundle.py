"""Adding the fine-tuned LLM voter to a detector bundle (``python -m finetune --bundle B``).

The bundle's other voters are kept as they are; the LLM voter (adapter, retrieval index and
calibrated threshold) joins them as ``llm``, replacing an earlier one, so the ensemble becomes
FlexLog's four voters under the bundle's vote rule (a weighted or stacked rule gives the newcomer
the weight :meth:`~flexlog.vote_rules.VoteRule.with_voter` says). Metrics recorded for the old ensemble no longer describe the new one and
are moved under ``data.previous_metrics``.
"""

from __future__ import annotations

from pathlib import Path

from .recipe import Recipe


def add_llm_voter(bundle: str | Path, adapter: str | Path, recipe: Recipe) -> list[str]:
    """Rewrite ``bundle`` with the LLM voter of ``adapter`` added; returns the voter names."""
    from flexlog.bundle import load_bundle, save_bundle
    from flexlog.detector import Detector
    from flexlog.ensemble import VotingEnsemble

    loaded = load_bundle(bundle)
    voter = recipe.llm_voter(adapter).fit([], templates=loaded.templates)
    members = [(n, v) for n, v in loaded.detector.ensemble.voters if n != "llm"]
    members.append(("llm", voter))
    manifest = loaded.manifest
    config = dict(manifest.get("config", {}))
    config["voters"] = [n for n, _ in members]
    data = dict(manifest.get("data", {}))
    data["finetune"] = {"recipe": recipe.name, "adapter": str(adapter)}
    if manifest.get("metrics"):
        data["previous_metrics"] = manifest["metrics"]
    rule = loaded.detector.ensemble.rule.with_voter("llm")
    save_bundle(
        Detector(VotingEnsemble(members, rule)),
        bundle,
        config=config,
        data=data,
        templates=loaded.templates,
        parser_state=loaded.parser_state,
        overwrite=True,
    )
    return config["voters"]
