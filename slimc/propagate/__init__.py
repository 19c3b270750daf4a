"""Shape rules → coupled channel groups → removal plan (with reasons).

1. channel elements into groups (:mod:`.groups`: the rules' edges as connected components);
2. reshapes resolved once fixed dims are known (:mod:`.reshapes`: flatten joins the free
   part; several free parts are matched by coordinates and kept as a rectangle);
3. the interpreter (:mod:`.interpreter`): forward *dead* analysis (every source behind a
   channel masked, ``any`` through products), *zero* analysis (is the channel exactly zero
   in the reference) and backward liveness;
4. the plan (:mod:`.plan`): a group goes iff it has no barrier and either its sink-facing
   channels (and those a contraction of two activations reads) are dead or every sink slice
   is masked (``channel`` mode), or it is provably
   zero/unused in the user-masked model (``exact`` mode); grown by liveness; closed under
   constraints (GroupNorm blocks, rectangles, zero-at-LayerNorm); empty layers; final masks
   (⊇ user masks) and kept indices for every slot.
"""
from __future__ import annotations

from slimc.propagate.groups import any_by_group, count_by_group
from slimc.propagate.interpreter import Propagation, param_aliases
from slimc.propagate.plan import RemovalPlan, plan
from slimc.propagate.reshapes import ProductFact

__all__ = ["ProductFact", "Propagation", "RemovalPlan", "any_by_group", "count_by_group", "param_aliases", "plan"]
