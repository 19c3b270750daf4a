"""``quantize(model_or_compile_result, example_inputs, method=…)``: one call, any method.

A CompileResult is quantized as its slim graph (calibrated on it); a model as it is. The
torch methods (``weight``, ``qat``, ``dorefa``, ``bnn``) work on a copy: the model given is
not changed (use :class:`slimc.quantize.QAT` to train the model itself).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from slimc.errors import ConfigError, DataError
from slimc.inputs import bind
from slimc.prune.data import UserData
from slimc.quantize.config import QuantConfig
from slimc.quantize.methods import method as get_method
from slimc.quantize.result import QuantResult


#: what makes a model a transformer for the defaults: module classes, or (a graph traced to
#: ATen ops by the export front end, whose modules are gone) the ops its nodes call
TRANSFORMER_MODULES = ("Attention", "LayerNorm", "RMSNorm", "TransformerEncoderLayer", "TransformerDecoderLayer")
TRANSFORMER_OPS = ("softmax", "layer_norm", "scaled_dot_product_attention", "rms_norm")


def auto_method(module: nn.Module) -> str:
    """static for CNNs, dynamic for transformer blocks (attention, LayerNorm: as modules or graph ops)."""
    from torch import fx

    if any(any(k in type(m).__name__ for k in TRANSFORMER_MODULES) for m in module.modules()):
        return "dynamic"
    if isinstance(module, fx.GraphModule) and any(
            any(k in str(n.target).lower() for k in TRANSFORMER_OPS) for n in module.graph.nodes):
        return "dynamic"
    return "static"


def quantize(model: Any, example_inputs: Any = None, method: str = "auto", *, data: Any = None,
             config_list: Any = None, bits: int | None = None, per_channel: bool = True, calibrate: str = "minmax",
             all_ops: bool = False, evaluate: Callable | None = None, finetune: Callable | None = None,
             steps: int = 0, masks: Any = None, max_batches: int | None = None, user_data: UserData | None = None,
             check_batches: int = 4) -> QuantResult:
    """Quantize ``model`` (an nn.Module, or a :class:`slimc.CompileResult`: its slim graph).

    ``method``: ``auto`` (static for CNNs, dynamic for transformers), ``static``, ``dynamic``,
    ``weight`` (Naive), ``qat``, ``dorefa``, ``bnn``. ``data``: calibration batches (static;
    the check's inputs for every method); ``evaluate(model) -> float``: accuracy of the float
    model and of the int8 file; ``finetune(model, steps)`` trains the QAT-family methods for
    ``steps`` steps (0: export the quantizers untrained, calibrated on ``data``). ``masks``
    (QAT family, a model): trained masked, compiled before export (one slim int8 file).
    Returns a :class:`QuantResult` (``.save(out)``, ``.report``, callable in onnxruntime).
    """
    user = (user_data or UserData()).with_api(data=data)
    if evaluate is not None:
        user.evaluate = evaluate
    if finetune is not None:
        user.finetune = finetune
    from slimc.compiler import CompileResult

    if isinstance(model, CompileResult):
        if masks is not None:
            raise ConfigError("masks= with a CompileResult: it is slim already; quantize it without masks")
        module = model.model if model.model is not None and get_method(_name(method, model.module)).trains \
            else model.module
        inputs, dyn, stem = model.example_inputs, model.dynamic_dims, "slim"
    elif isinstance(model, nn.Module):
        if example_inputs is None:
            raise ConfigError("example_inputs are needed to export the model: pass a tensor or a tuple")
        module, inputs, dyn, stem = model, bind(model, example_inputs), None, "model"
    else:
        raise ConfigError(f"quantize takes an nn.Module or a CompileResult, not a {type(model).__name__}")
    meth = get_method(_name(method, module))
    b = meth.check_bits(meth.default_bits if bits is None else bits)
    config = QuantConfig.parse(config_list, b) if config_list is not None else None
    if not meth.in_torch:
        if masks is not None:
            raise ConfigError(f"masks= is for the QAT-family methods; for {meth.name}: compile first "
                              "(slimc.compile(model, masks, …)) and quantize the CompileResult")
        from slimc.quantize.export import export_ptq

        return export_ptq(module, inputs, meth, user=user, config=config, per_channel=per_channel,
                          calibrate=calibrate, all_ops=all_ops, dynamic_dims=dyn, stem=stem, max_batches=max_batches,
                          check_batches=check_batches)
    res = _in_torch(module, inputs, meth, b, config, per_channel, user, steps, masks, check_batches)
    if stem == "slim":  # a CompileResult's slim model
        res.of_slim("slim model (your class)" if module is model.model else "slim graph")
    return res


def _name(method: str, module: nn.Module) -> str:
    return auto_method(module) if method == "auto" else method


def _in_torch(module: nn.Module, inputs: tuple, meth: Any, bits: int, config: Any, per_channel: bool,
              user: UserData, steps: int, masks: Any, check_batches: int) -> QuantResult:
    from slimc.copying import safe_copy
    from slimc.quantize.export import export_qat, user_batches
    from slimc.quantize.qat import QAT

    batches = user_batches(user, inputs, f"checking the {meth.label} export", check_batches)  # before training

    work = safe_copy(module)
    work.train(module.training)
    q = QAT(work, inputs, config, meth.name, bits, masks=masks, per_channel=per_channel)
    if meth.trains and steps and user.finetune is None:
        raise DataError(f"{meth.label} trains: define `finetune(model, steps)` in model.py (a short training loop "
                        "on the model it is given), or pass finetune= to the API; or --steps 0 to export it untrained")
    if meth.trains and steps:
        from slimc.prune.data import failed

        try:
            user.finetune(q.model, steps)
        except Exception as e:
            raise failed(f"finetune(model, {steps})", e) from e
        q.model.eval()
    elif not meth.trains or not steps:
        q.model.eval()
    res = export_qat(q, user=user, check_batches=check_batches, float_module=module, batches=batches)
    res.report["steps"] = steps
    return res
