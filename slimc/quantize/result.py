"""``QuantResult``: the int8 file (in memory), its report, a callable onnxruntime session."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimc.errors import LoadError


@dataclass
class QuantResult:
    int8: Any  # onnx.ModelProto
    float: Any  # onnx.ModelProto: the float file of the same graph
    report: dict  # the report's "quantize" section
    stem: str = "model"  # files: <stem>.int8.onnx (and <stem>.onnx, the float file, where none is there)
    _module: Any = field(default=None, repr=False)

    @property
    def module(self):
        """The int8 file in onnxruntime, as a module: torch tensors in, torch tensors out."""
        if self._module is None:
            from slimc.quantize.check import OrtModule, session

            self._module = OrtModule(session(self.int8))
        return self._module

    @property
    def session(self):
        return self.module.session

    def __call__(self, *inputs: Any) -> Any:
        return self.module(*inputs)

    def of_slim(self, graph: str = "slim graph") -> "QuantResult":
        """This result quantizes a compile's slim model: ``slim.int8.onnx`` beside its
        ``slim.onnx``, and the report says which graph (``graph``)."""
        self.stem = "slim"
        self.report["graph"] = graph
        return self

    def files(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        return {"int8": out / f"{self.stem}.int8.onnx", "float": out / f"{self.stem}.onnx", "report": out / "report.json"}

    def save(self, out_dir: str | Path) -> dict[str, str]:
        """Write ``<stem>.int8.onnx``, the float ``<stem>.onnx`` unless the folder has one (a compile
        output's slim.onnx), and the ``quantize`` section of ``report.json`` (added to the report a
        compile wrote there, else a report of its own). Every file is written whole or not at all."""
        from slimc.atomic import all_or_nothing

        with all_or_nothing():  # where a write fails, no output is left half-written
            return self._save(out_dir)

    def _save(self, out_dir: str | Path) -> dict[str, str]:
        from slimc.atomic import atomic_path, make_dirs, write_text

        f = self.files(out_dir)
        report: dict = {}
        if f["report"].is_file():
            try:
                report = json.loads(f["report"].read_text())
            except ValueError:
                raise LoadError(f"'{f['report']}' is not JSON: choose another output folder") from None
        make_dirs(f["int8"].parent)
        paths = {}
        if not f["float"].is_file() and self.float is not None:
            with atomic_path(f["float"]) as tmp:
                Path(tmp).write_bytes(self.float.SerializeToString())
            paths[f["float"].name] = str(f["float"])
        with atomic_path(f["int8"]) as tmp:
            Path(tmp).write_bytes(self.int8.SerializeToString())
        paths[f["int8"].name] = str(f["int8"])
        self.report["onnx"] = f["int8"].name
        self.report["float_onnx"] = f["float"].name
        report["quantize"] = self.report
        write_text(f["report"], json.dumps(report, indent=2, default=str) + "\n")
        paths["report.json"] = str(f["report"])
        return paths
