"""Token reduction behind one interface (`base.Strategy`: apply / remove / tokens per layer / the
result columns), for every tower family in `vlm_eff.towers`:

    dropping.py   naive, position_aware, cls_preserving, late_layer, evit, adaptive keep (presets of one mechanism)
    merging.py    tome, pitome (one merging mechanism, two ways to pick the pairs)
    boundary.py   visionzip, divprune (generative VLMs: between the vision tower and the language model), and what
                  the boundary strategies share (budgets, the feature layer's attention)
    random_tokens.py  random (boundary: a seeded uniform subset of the projected tokens)
    vispruner.py  vispruner (boundary: important tokens by CLS attention, the rest by duplicate removal)
    cdpruner.py   cdpruner (boundary: a DPP over the projected tokens conditioned on the instruction)
    llm.py        fastv, pyramiddrop (generative VLMs: inside the language model), and what the llm site shares
    dart.py       dart (llm site: pivots by key norm, then the image tokens least similar to each)
    sparsevlm.py  sparsevlm (llm site: stages keeping what the question's raters attend to, recycling the rest)

    registry.py   the one registry (STRATEGIES for a tower, VLM_STRATEGIES at the boundary and in the language
                  model) and the builders: `build` maps the `pruning` config group to a dual encoder's strategy,
                  `build_vlm` to a generative VLM's (any site); a new strategy is a module here and one entry there
"""

from vlm_eff.reduction.registry import STRATEGIES, VLM_STRATEGIES, apply_config, build, build_vlm, remove_all

__all__ = ["STRATEGIES", "VLM_STRATEGIES", "apply_config", "build", "build_vlm", "remove_all"]
