"""``QAT``: NNI's training-time quantizers (QAT, DoReFa, BNN) and its Naive quantizer on the
user's own model, exported with their trained grids.

    q = QAT(model, example_inputs, method="qat", bits=8)   # q.model is model, fake-quantized
    train(q.model)                                           # as usual (straight-through gradients)
    res = q.export("out/")                                   # int8 ONNX + report.json, checked

``masks=`` (complete masks, e.g. from ``slimc prune``): masked weights stay zero while it trains
(the weight parametrization multiplies by the mask), and :meth:`QAT.export` compiles the
model first: one slim int8 file. Its contract (checked on every export): onnxruntime on the
int8 file computes what the fake-quant model computes (:mod:`slimc.quantize.check`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimc.errors import ConfigError
from slimc.inputs import bind
from slimc.quantize.config import LAYER_TYPES, QuantConfig, Scheme
from slimc.quantize.deploy import Points
from slimc.quantize.methods import BNN_ACTIVATIONS, method as get_method
from slimc.quantize.quantizers import (ActQuantizer, Attached, Clock, WeightQuantizer, conv_bn_pairs, input_hook,
                                       output_hook)


def default_config(name: str, bits: int) -> QuantConfig:
    m = get_method(name)
    extra = [{"quant_types": ["output"], "quant_bits": 1, "op_types": list(BNN_ACTIVATIONS)}] if m.name == "bnn" else []
    types = tuple(t for t in m.types if m.name != "bnn" or t == "weight")
    return QuantConfig.default(types, bits, LAYER_TYPES, extra)


class QAT:
    """Fake quantization on ``model`` itself (same object, same class); see the module docstring.

    ``config_list``: NNI style (:mod:`slimc.quantize.config`); default: per ``method``, every
    Conv/Linear (QAT: weight, input and output at ``bits``; DoReFa: weights; BNN: weights and
    the outputs of the activation modules; ``weight``: NNI's Naive, weights only).
    ``activation_signed``: int8 instead of uint8 activations (default: what is fast on this
    CPU, :mod:`slimc.quantize.host`). ``quant_start_step``: ranges observed only, until this
    many training steps have run.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, config_list: Any = None, method: str = "qat",
                 bits: int | None = None, *, masks: Any = None, quant_start_step: int = 0, per_channel: bool = True,
                 activation_signed: bool | None = None, decay: float = 0.99):
        from slimc.masks import normalize
        from slimc.quantize.host import default_types

        self.method = get_method(method)
        if not self.method.in_torch:
            raise ConfigError(f"method '{method}' runs in onnxruntime's quantizer: use slimc.quantize.quantize(...)")
        self.bits = self.method.check_bits(self.method.default_bits if bits is None else bits, "bits")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model is a {type(model).__name__}, not an nn.Module")
        self.model = model
        self.inputs = bind(model, example_inputs)
        self.masks = normalize(masks, model) if masks is not None else None
        self.config = QuantConfig.parse(config_list, self.bits) if config_list is not None else \
            default_config(self.method.name, self.bits)
        scheme = Scheme(per_channel=per_channel, symmetric=True)
        self.layers = self.config.resolve(model, scheme)
        self.notes: list[str] = []
        if config_list is None and self.method.name == "bnn":
            self._keep_ends_float()
        if not any(lq.has("weight") for lq in self.layers.values()):
            raise ConfigError(f"{type(model).__name__} has no layer {self.method.label} quantizes: it quantizes the "
                              "weights of Conv1d/2d/3d, Linear (and Embedding) modules; check the config list")
        for lq in self.layers.values():
            for kind, b in lq.bits.items():
                self.method.check_bits(b, f"config entry {lq.entry}: quant_bits.{kind}")
        host = default_types()
        self.signed = host["activation"] == "int8" if activation_signed is None else activation_signed
        # 8-bit weights feeding int8 kernels that saturate on this CPU (no VNNI): 7 bit, as onnxruntime does
        self.reduce_range = bool(host["reduce_range"]) and self.method.name == "qat"
        self.clock = Clock()
        self.start_step = quant_start_step
        self.decay = decay
        self.bn_after = conv_bn_pairs(model, self.inputs)  # conv → the BatchNorm the int8 file folds into it
        self.pairs = self.bn_after if self.method.fold_bn else {}  # … and QAT folds while it trains
        self.attached = Attached()
        self._attach()

    def _keep_ends_float(self) -> None:
        """BNN's default: the first and the last weighted layer keep float weights (Courbariaux et al.,
        and NNI's BNN example: binarizing the input layer and the classifier costs most accuracy)."""
        weighted = [n for n, lq in self.layers.items() if lq.has("weight")]
        if len(weighted) < 3:
            return
        for n in (weighted[0], weighted[-1]):
            bits = {k: b for k, b in self.layers[n].bits.items() if k != "weight"}
            if bits:
                self.layers[n] = replace(self.layers[n], bits=bits)
            else:
                del self.layers[n]
        self.notes.append(f"BNN: '{weighted[0]}' and '{weighted[-1]}' (the first and last weighted layers) keep "
                          "float weights; a config list binarizes them too")

    # ------------------------------------------------------------------ attaching

    def _act(self, kind: str, bits: int, start: int) -> ActQuantizer:
        return ActQuantizer(kind, bits, self.signed, self.clock, max(start, self.start_step), self.decay)

    def _attach(self) -> None:
        mods = dict(self.model.named_modules())
        act_kind = "sign" if self.method.name == "bnn" else "affine"
        for name, lq in self.layers.items():
            m = mods[name]
            if lq.has("weight"):
                mask = self.masks.get(f"{name}.weight") if self.masks is not None else None
                bits = 7 if self.reduce_range and lq.bits["weight"] == 8 else lq.bits["weight"]
                wq = WeightQuantizer(self.method.weight_kind, bits, lq.weight_scheme, self.clock,
                                     max(lq.start_step, self.start_step), mask)
                if name in self.pairs:
                    wq.fold(mods[self.pairs[name]])
                # a tied weight (GPT's lm_head and embedding) is one tensor: quantized for all its users
                tied = [n for n, o in mods.items() if n != name and o._parameters.get("weight") is m.weight]
                for n in [name, *tied]:
                    parametrize.register_parametrization(mods[n], "weight", wq, unsafe=True)
                    self.attached.weights[n] = wq
            if lq.has("input"):
                if isinstance(m, nn.Embedding):
                    self.notes.append(f"'{name}': the input of an Embedding is token ids, not quantized")
                else:
                    aq = self._act(act_kind, lq.bits["input"], lq.start_step)
                    self.attached.inputs[name] = aq
                    self.attached.handles.append(m.register_forward_pre_hook(input_hook(aq)))
            if lq.has("output"):
                # a BatchNorm the int8 file folds into the conv: its output is the conv's
                target = self.bn_after.get(name, name) if lq.has("weight") else name
                aq = self._act(act_kind, lq.bits["output"], lq.start_step)
                self.attached.outputs[target] = aq
                self.attached.handles.append(mods[target].register_forward_hook(output_hook(aq)))
        self.attached.handles.append(self.model.register_forward_pre_hook(self._tick))
        if self.reduce_range:
            self.notes.append("this CPU has no VNNI: 8-bit weights are kept to 7 bit (reduce_range), so that "
                              "onnxruntime's u8×s8 kernels do not saturate")

    def _tick(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            self.clock.step += 1

    @property
    def quantizers(self) -> nn.ModuleDict:
        """Every quantizer (state: activation ranges), e.g. to save with the model."""
        d = nn.ModuleDict()
        for kind, group in (("weight", self.attached.weights), ("input", self.attached.inputs),
                            ("output", self.attached.outputs)):
            for name, q in group.items():
                d[f"{kind}:{name}".replace(".", "/")] = q
        return d

    def remove(self) -> nn.Module:
        """Take the quantizers off (weights keep their quantized values); returns the model."""
        self.attached.remove_hooks()
        for name in self.attached.weights:
            m = self.model.get_submodule(name)
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        self.attached.weights.clear()
        return self.model

    # ------------------------------------------------------------------ calibration and grids

    def calibrate(self, batches: Iterable[tuple]) -> int:
        """Observe activation ranges on ``batches`` in eval mode (untrained quantizers: Naive with
        activations, or an export before any training step); returns the batches seen."""
        from slimc.modes import eval_mode

        acts = [*self.attached.inputs.values(), *self.attached.outputs.values()]
        for a in acts:
            a.observing = True
        n = 0
        try:
            with eval_mode(self.model), torch.no_grad():
                for b in batches:
                    self.model(*b)
                    n += 1
        finally:
            for a in acts:
                a.observing = False
        return n

    def unobserved(self) -> list[str]:
        return [n for n, a in [*self.attached.inputs.items(), *self.attached.outputs.items()]
                if a.kind == "affine" and not bool(a.seen)]

    def points(self, plan: Any = None, names: set[str] | None = None) -> Points:
        """The grids as they stand, by module name (``plan``: a compile's removal plan — per-channel
        grids keep the channels it keeps; ``names``: the modules of the model being deployed)."""
        pts = Points()
        for name, wq in self.attached.weights.items():
            grid = wq.grid(wq.folded_weight(self.model.get_submodule(name)))
            if grid.axis is not None and plan is not None:
                keep = plan.kept_index(("p", f"{name}.weight", 0))
                if keep is not None:
                    from slimc.quantize.grid import Grid

                    grid = Grid(grid.scale[keep], grid.zero_point[keep], grid.qmin, grid.qmax, grid.axis)
            pts.weights[name] = grid
            if wq.folded:
                pts.folded.add(name)
        for group, out in ((self.attached.inputs, pts.inputs), (self.attached.outputs, pts.outputs)):
            for name, aq in group.items():
                out[name] = "sign" if aq.kind == "sign" else aq.grid()
        if names is not None:
            missing = sorted({*pts.weights, *pts.inputs, *pts.outputs} - names)
            if missing:
                raise ConfigError(f"the compiled model has no module '{missing[0]}' the quantizers sit on "
                                  "(compile with the fx front end keeps module names)")
        return pts

    def float_weights(self, module: nn.Module, plan: Any = None) -> nn.Module:
        """A copy of ``module`` (``q.model``, or the slim graph it compiled to: ``plan``) whose
        quantized weights hold their float values again (masked): the float model of the graph."""
        from slimc.copying import safe_copy

        out = safe_copy(module).eval()
        with torch.no_grad():
            for name, wq in self.attached.weights.items():
                w = self.model.get_submodule(name).parametrizations.weight.original.detach()
                if wq.mask is not None:
                    w = w * wq.mask
                if plan is not None:
                    from slimc.shards import sliced

                    w = sliced(plan, f"{name}.weight", w)
                out.get_submodule(name).weight.copy_(w)
        return out

    def reference(self, module: nn.Module) -> nn.Module:
        """``module`` (float, weights already quantized: a compiled ``q.model``) with this QAT's
        activation quantizers on its modules of the same names: the fake-quant model it compiles to."""
        from slimc.copying import safe_copy

        ref = safe_copy(module).eval()
        mods = dict(ref.named_modules())
        for name, aq in self.attached.inputs.items():
            mods[name].register_forward_pre_hook(input_hook(aq))
        for name, aq in self.attached.outputs.items():
            mods[name].register_forward_hook(output_hook(aq))
        return ref

    def export(self, out: Any = None, *, data: Any = None, evaluate: Any = None, check_batches: int = 4,
               front_end: str = "auto") -> "Any":
        """The int8 ONNX with the trained grids (not recalibrated), checked against ``q.model``;
        with ``masks`` given at construction, compiled first (one slim int8 file). Returns a
        :class:`~slimc.quantize.result.QuantResult`; ``out``: also save it there."""
        from slimc.quantize.export import export_qat

        res = export_qat(self, data=data, evaluate=evaluate, check_batches=check_batches, front_end=front_end)
        if out is not None:
            res.save(out)
        return res
