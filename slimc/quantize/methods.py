"""The quantization methods, as data: what each one quantizes, with which bits, and how.

Post-training, through onnxruntime's quantizer (:mod:`slimc.quantize.ptq`): ``static`` (QDQ,
calibrated activations) and ``dynamic`` (int8 MatMul weights, activations quantized at run
time). In torch, then exported with their grids (:mod:`slimc.quantize.qat`): ``weight``
(NNI's Naive quantizer: weights only, no training), ``qat``, ``dorefa`` and ``bnn``.
"""
from __future__ import annotations

from dataclasses import dataclass

from slimc.errors import ConfigError

#: activation modules BNN binarizes the output of (NNI's examples use Hardtanh)
BNN_ACTIVATIONS = ("Hardtanh", "ReLU", "ReLU6", "LeakyReLU", "Tanh")


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    weight_kind: str | None  # torch methods: affine | dorefa | sign; None: onnxruntime's quantizer
    types: tuple[str, ...]  # what the default config quantizes on Conv/Linear
    default_bits: int
    bits: tuple[int, int]  # the bits it can do (inclusive)
    trains: bool = False  # training-time (QAT family): finetune from the CLI, contract vs the fake-quant model
    fold_bn: bool = False
    why_bits: str = ""

    def check_bits(self, bits: int, what: str = "--bits") -> int:
        lo, hi = self.bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
            span = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise ConfigError(f"{what} {bits}: {self.label} quantizes to {span} bit" + (f" ({self.why_bits})"
                                                                                         if self.why_bits else ""))
        return bits

    @property
    def in_torch(self) -> bool:
        return self.weight_kind is not None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("static", "static (onnxruntime QDQ, calibrated)", None, (), 8, (8, 8),
           why_bits="onnxruntime's int8 kernels; for fewer bits use --method weight, qat or dorefa"),
    Method("dynamic", "dynamic (onnxruntime int8 MatMul)", None, (), 8, (8, 8),
           why_bits="onnxruntime's int8 kernels; for fewer bits use --method weight, qat or dorefa"),
    Method("weight", "Naive (weights only)", "affine", ("weight",), 8, (2, 8)),
    Method("qat", "QAT", "affine", ("weight", "input", "output"), 8, (2, 8), trains=True, fold_bn=True),
    Method("dorefa", "DoReFa", "dorefa", ("weight",), 4, (1, 7), trains=True,
           why_bits="its 2^k levels are odd integers over 2^k − 1: 8 bit would need a 9-bit container"),
    Method("bnn", "BNN", "sign", ("weight", "output"), 1, (1, 1), trains=True,
           why_bits="sign weights and activations"),
)}
ALIASES = {"naive": "weight"}


def method(name: str) -> Method:
    key = ALIASES.get(name, name)
    if key not in METHODS:
        raise ConfigError(f"unknown quantization method '{name}': use {', '.join(METHODS)}")
    return METHODS[key]
