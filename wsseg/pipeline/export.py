"""`wsseg export`: a trained segmenter as ONNX, TorchScript or safetensors, with what it takes.

Every format takes what the model takes: float32 N×3×H×W RGB in [0, 1], any H and W from the
model's least size up. The normalisation (x − mean) / std is part of the model, so it is inside
the ONNX and TorchScript graphs; mean and std are recorded beside the class names, the palette
and the input bands (`export_metadata`) for readers that want them:

    onnx         dynamic batch, height and width; metadata in the model's metadata_props
    torchscript  torch.jit.trace; metadata in the archive's extra file `wsseg.json`
    safetensors  the weights only (no code, no pickle); metadata in the header, every value a
                 string (JSON where it is not one): with `config` the segmenter can be rebuilt

Each export is checked before it is kept: the exported graph runs at the example size and at
a second, odd size, and must give the PyTorch logits (a graph that froze a size fails here).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from wsseg.core.io import atomic_write, to_jsonable
from wsseg.models import min_input_px
from wsseg.pipeline.predict_plan import PredictError
from wsseg.pipeline.release import TrainedModel

FORMATS = ("onnx", "torchscript", "safetensors")
# Opset 17: every operator these graphs use (Conv, ConvTranspose, Pad with computed pads, Resize,
# BatchNorm folded) has its current form there, onnxruntime has run it since 1.14, and it is well
# inside what the TorchScript-based exporter writes. That exporter is used because it needs
# nothing beyond `onnx`; the dynamo one needs onnxscript and takes minutes on EfficientNet-Lite's
# size arithmetic.
ONNX_OPSET = 17
# Exported logits must match PyTorch's to this fraction of the largest logit (at least 1): float32
# graphs with reordered arithmetic differ by ~1e-5 of the logits' scale, and a trained model's
# logits reach 10–20, while a graph frozen at the example size is off by 0.5 or more.
TOLERANCE = 1e-4


def export_metadata(trained: TrainedModel) -> dict[str, str]:
    """What a user of the exported model needs, as strings (JSON for lists and mappings)."""
    eval_cfg = trained.config.get("eval", {})
    values = {
        "producer": "wsseg",
        "model_name": trained.model_name,
        "model_options": trained.options,
        "class_names": list(trained.class_names),
        "palette": [list(c) for c in trained.palette],
        "ignore_index": trained.ignore_index,
        "input": "image: float32 N×3×H×W, the bands below scaled to [0, 1]; normalised inside the graph",
        "output": "logits: float32 N×C×H×W class scores at the input size (argmax = class index)",
        "bands": list(trained.bands),
        "mean": list(trained.mean),
        "std": list(trained.std),
        "normalisation": "(x - mean) / std per channel, applied inside the model",
        "window_px": eval_cfg.get("window_px"),
        "stride_px": eval_cfg.get("stride_px"),
        "source": trained.source,
    }
    return {k: v if isinstance(v, str) else json.dumps(to_jsonable(v)) for k, v in values.items()}


def example_sizes(trained: TrainedModel) -> tuple[tuple[int, int], tuple[int, int]]:
    """The tracing size (the evaluation window, capped) and a second, odd one to check it."""
    least = min_input_px(trained.model_name, trained.options)
    side = max(least, min(int(trained.config.get("eval", {}).get("window_px") or 256), 512))
    return (side, side), (side + 5, side + 11)


def export_model(trained: TrainedModel, fmt: str, out: str | Path, force: bool = False) -> Path:
    """Write `trained` as `fmt` (onnx, torchscript, safetensors) to `out`, checked; returns `out`."""
    out = Path(out)
    if fmt not in FORMATS:
        raise PredictError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.exists() and not force:
        raise PredictError(f"{out} exists; pass --force to overwrite it")
    model = trained.model.cpu().eval()
    writer = {"onnx": _write_onnx, "torchscript": _write_torchscript, "safetensors": _write_safetensors}[fmt]
    atomic_write(out, lambda tmp: writer(trained, model, tmp))
    return out


def _check(name: str, run, model: torch.nn.Module, size: tuple[int, int]) -> None:
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(image).numpy()
        try:
            got = np.asarray(run(image))
        except Exception as error:  # a graph that froze a size may fail outright at another (a reshape)
            raise PredictError(f"the {name} export fails at {size[0]}×{size[1]} px ({_last_line(error)}): "
                               f"the model does not trace to a size-independent graph") from None
    atol = TOLERANCE * max(1.0, float(np.abs(expected).max()))
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=atol):
        error = np.abs(got - expected).max() if got.shape == expected.shape else f"shape {got.shape}"
        raise PredictError(f"the {name} export disagrees with PyTorch at {size[0]}×{size[1]} px ({error}): "
                           f"the model does not trace to a size-independent graph")


def _last_line(error: Exception) -> str:
    """The message of an error from inside a traced graph: its last non-empty line (the interpreter's
    traceback comes first)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _write_onnx(trained: TrainedModel, model: torch.nn.Module, path: Path) -> None:
    import onnx
    import onnxruntime

    example, second = example_sizes(trained)
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with warnings.catch_warnings():
            # The exporter's deprecation notice and tracer warnings: whether the graph holds for
            # other sizes is checked below by running it.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.rand(1, 3, *example),), str(path), dynamo=False,
                              opset_version=ONNX_OPSET, input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": axes, "logits": axes})
    except Exception as error:  # the exporter raises many types for unsupported operators
        raise PredictError(f"{trained.model_name} cannot be exported to ONNX: {type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''}") from None
    proto = onnx.load(str(path))
    for key, value in export_metadata(trained).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"wsseg {trained.model_name}: {', '.join(trained.class_names)}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in (example, second):
        _check("ONNX", lambda x: session.run(None, {"image": x.numpy()})[0], model, size)


def _write_torchscript(trained: TrainedModel, model: torch.nn.Module, path: Path) -> None:
    example, second = example_sizes(trained)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # as for ONNX: checked by running the traced module
            traced = torch.jit.trace(model, torch.rand(1, 3, *example), check_trace=False)
    except Exception as error:
        raise PredictError(f"{trained.model_name} cannot be traced to TorchScript: {type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''}") from None
    for size in (example, second):
        _check("TorchScript", lambda x: traced(x).numpy(), model, size)
    with warnings.catch_warnings():
        # PyTorch deprecates TorchScript in favour of torch.export; the format still loads with
        # torch.jit.load, in Python and in libtorch C++, which is what it is for here.
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(path), _extra_files={"wsseg.json": json.dumps(export_metadata(trained))})


def _write_safetensors(trained: TrainedModel, model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {**export_metadata(trained), "config": json.dumps(to_jsonable(trained.config))}
    save_file(tensors, str(path), metadata=metadata)
