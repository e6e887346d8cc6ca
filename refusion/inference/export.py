"""ONNX export of the toolkit's networks, with dynamic batch, height and width, checked by ONNX Runtime.

Noise networks (ConditionalNAFNet, ConditionalUNet; StereoNAFNet is refused, see export_onnx) take
``x_t, mu, t`` (the unconditional denoising-sde networks ``x_t, t``; BokehNAFNet also ``lens_info``,
one (B, 3) tensor [src_lens, tgt_lens, disparity]) (and ``cond`` when their
``cond_channels`` > 0), with ``t`` an int64 (B,) vector of timesteps as the pipeline passes it;
every other network takes one ``image``. Any side from one padding multiple (2**levels) up works
in the exported graph: the networks' own padding to that multiple and the crop back are part of it.

The export uses torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``); the older
TorchScript exporter cannot export the single-image channel-attention fold of the NAFBlock, whose
convolution weight is computed from the input. ``pip install "refusion[onnx]"`` installs the
exporter's and the check's packages (onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch

from refusion.models.capabilities import capabilities_of
from refusion.models import final_output

__all__ = ["example_inputs", "input_names", "export_onnx", "runtime_session", "check_onnx"]

INSTALL_HINT = 'ONNX export needs onnx, onnxscript and onnxruntime: pip install "refusion[onnx]"'


def _is_noise_network(net) -> bool:
    return capabilities_of(net).purpose == "noise"


def _cond_channels(net) -> int:
    config = getattr(net, "config", None)
    return int(config.get("cond_channels", 0)) if config is not None else 0


def _kind(net) -> str:
    """How the network is called: image | unconditional net(x_t, t) | bokeh (lens_info) | noise net(x_t, mu, t)."""
    conditioning = capabilities_of(net).conditioning
    if _is_noise_network(net) and conditioning == "none":
        return "unconditional"
    if conditioning == "lens":
        return "bokeh"
    return "noise" if _is_noise_network(net) else "image"


class _LensInfoAsTensor(torch.nn.Module):
    """BokehNAFNet with its lens information as one (B, 3) input [src_lens, tgt_lens, disparity]:
    a graph input must be a tensor, the network's own argument is a list of three (B,) tensors."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x_t, mu, t, lens_info):
        return self.net(x_t, mu, t, lens_info=list(lens_info.unbind(1)))


def _graph_module(net) -> torch.nn.Module:
    return _LensInfoAsTensor(net).eval() if _kind(net) == "bokeh" else net


def input_names(net) -> list[str]:
    """Names of the exported graph's inputs, in call order."""
    kind = _kind(net)
    if kind == "unconditional":
        return ["x_t", "t"]
    if kind == "bokeh":
        return ["x_t", "mu", "t", "lens_info"]
    if kind == "noise":
        return ["x_t", "mu", "t"] + (["cond"] if _cond_channels(net) else [])
    return ["image"]


def example_inputs(net, *, batch: int = 1, height: int = 64, width: int = 64, seed: int = 0) -> tuple:
    """Random inputs of the right kinds and channel counts for ``net`` (float32, NCHW)."""
    channels = capabilities_of(net).input_channels or 3
    generator = torch.Generator().manual_seed(seed)
    image = lambda c: torch.rand(batch, c, height, width, generator=generator)  # noqa: E731
    kind = _kind(net)
    if kind == "image":
        return (image(channels),)
    t = torch.randint(1, 100, (batch,), generator=generator)
    if kind == "unconditional":
        return (image(channels), t)
    inputs = (image(channels), image(channels), t)
    if kind == "bokeh":   # lenses as the official encoding gives them (+-10 x f-number) and a disparity
        lens = torch.stack([torch.empty(batch).uniform_(-160, 160, generator=generator),
                            torch.empty(batch).uniform_(-160, 160, generator=generator),
                            torch.empty(batch).uniform_(0, 50, generator=generator)], dim=1)
        return inputs + (lens,)
    return inputs + ((image(_cond_channels(net)),) if _cond_channels(net) else ())


def _torch_outputs(net, inputs: tuple) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = _graph_module(net)(*inputs)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def export_onnx(net: torch.nn.Module, path: str | Path, *, example_size: int = 64, check: bool = True) -> dict:
    """Write ``net`` as an ONNX model at ``path`` (batch, height and width dynamic).

    The file is written next to ``path`` and renamed into place, so a failed export leaves no
    partial file. With ``check`` the saved model is run by ONNX Runtime on two input sizes that
    differ from the example (one not a multiple of the network's padding) and compared with the
    PyTorch network; a difference above 1e-4 of the output's scale raises a RuntimeError.
    Returns ``{"path", "inputs", "outputs", "max_abs_error"}`` (error None without the check).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401 - the exporter needs it; fail here with the install hint
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    from torch.export import Dim

    path = Path(path)
    if capabilities_of(net).conditioning == "stereo":
        # the exporter fixes the batch size of its cross-view attention (views stacked on the batch
        # axis): the graph would run one batch size only, so no graph is written
        raise ValueError("ONNX export of StereoNAFNet is not supported: torch's exporter specialises the batch "
                         "size of its cross-view attention, so the graph would accept one batch size only")
    net = net.eval()
    names = input_names(net)
    # not square: a square example lets the exporter tie the height and width symbols together
    inputs = example_inputs(net, batch=2, height=example_size, width=example_size + 16)
    # below one padding multiple PyTorch pads by replication instead of reflection, a branch the
    # exported graph does not keep: sides start at the multiple
    multiple = capabilities_of(net).multiple
    batch = Dim("batch", min=1, max=1024)
    height, width = Dim("height", min=multiple, max=65536), Dim("width", min=multiple, max=65536)
    height, width = Dim("height", min=multiple, max=65536), Dim("width", min=multiple, max=65536)
    dynamic = tuple({0: batch, 2: height, 3: width} if x.dim() == 4 else {0: batch} for x in inputs)
    outputs = ["stage1", "output"] if len(_torch_outputs(net, inputs)) == 2 else ["output"]
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # it prints its progress
            # several inputs share batch/height/width by design (x_t, mu, cond): not worth a warning
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
            program = torch.onnx.export(_graph_module(net), inputs, input_names=names, output_names=outputs,
                                        dynamic_shapes=dynamic, dynamo=True)
        model = program.model_proto
        # the exporter annotates rfft outputs with the input's width instead of width // 2 + 1;
        # ONNX Runtime trusts these optional annotations when it plans buffers and then fails
        # (NAFFT-Net), so they are dropped and Runtime infers every intermediate shape itself
        del model.graph.value_info[:]
        onnx.save_model(model, str(tmp), save_as_external_data=model.ByteSize() > 2**31 - 2**26)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    error = check_onnx(net, path) if check else None
    return {"path": str(path), "inputs": names, "outputs": outputs, "max_abs_error": error}


def runtime_session(path: str | Path):
    """An ONNX Runtime CPU session for the model at ``path``, on as many threads as torch uses."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(net: torch.nn.Module, path: str | Path, *, tolerance: float = 1e-4) -> float:
    """Run the ONNX model at ``path`` with ONNX Runtime against ``net``; the largest difference.

    Two cases: one image of 45x70 (odd, not a multiple of any network's padding) and a batch of 3
    of 64x64. Raises a RuntimeError when the final outputs differ by more than ``tolerance`` times
    the output's largest magnitude (at least 1).
    """
    session = runtime_session(path)
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for batch, height, width in ((1, 45, 70), (3, 64, 64)):
        inputs = example_inputs(net, batch=batch, height=height, width=width, seed=batch)
        got = torch.from_numpy(session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})[-1])
        want = final_output(_torch_outputs(net, inputs))
        if got.shape != want.shape:
            raise RuntimeError(f"{path}: ONNX output shape {tuple(got.shape)} != PyTorch {tuple(want.shape)} "
                               f"for inputs of {batch}x{height}x{width}")
        error = (got - want).abs().max().item()
        if error > tolerance * max(1.0, want.abs().max().item()):
            raise RuntimeError(f"{path}: ONNX Runtime output differs from PyTorch by {error:.3g} for inputs of "
                               f"{batch}x{height}x{width} (tolerance {tolerance:g} of the output scale)")
        worst = max(worst, error)
    return worst
