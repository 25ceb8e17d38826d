r"""The output-level self-check: does the captured filter reproduce what the module computes?

The affinity-level check (:attr:`analysis.capture_record.Capture.self_check_error`) says that the
captured affinity is the one the model applied. This one goes further: the module's output is
rebuilt from what was captured,

.. math::

    \hat Y = [X] + \rho\bigl(s \odot F + t\bigr), \qquad
    F = \sum_k B_k(\hat A)\, Z\, W_k \quad (\text{per head: } [A_1 Z_1, \dots, A_H Z_H] W_o),

with the residual input :math:`X` when the capture is a residual map, the output scale and
shift :math:`s, t` (BN in eval mode, LayerScale, the output projection's bias) and the ReLU
:math:`\rho` of the official SNL classification code, and compared with the output of the
re-run map (:func:`analysis.stability.jacobian.block_function`) on the same input:
:math:`\|\hat Y - Y\|_F / \|Y\|_F`.

What the filter-based measures (responses, Tao spectrum, damping, linearized stability)
describe is exactly this :math:`F`. Where it does not reproduce the module (a head-averaged
affinity, ``heads="mean"``, used for a multi-head layer), those measures are of an
approximation, and the row says by how much.

Not checked (``nan`` with the reason): post-LN layers (the LayerNorm after the sum is not in
the filter), N×M or channel-position graphs, captures without weights, module or input.

Examples
--------
>>> import torch
>>> from analysis.capture import capture
>>> from graphfilters.blocks import make_block
>>> _ = torch.manual_seed(0)
>>> block = make_block("nl", 4)
>>> for p in block.parameters():              # away from the identity at init
...     _ = torch.nn.init.normal_(p, std=0.5)
>>> cap = capture(block, torch.randn(2, 4, 3, 3), progress=False)["(root)"]
>>> err, how = reconstruction_error(cap)
>>> err < 1e-5
True
"""

from __future__ import annotations

import math

import torch

from .capture import Capture
from .observe import eval_mode
from .response import filter_output
from .stability import block_function

__all__ = ["reconstruction_error", "RECONSTRUCTION_TOL"]

#: Relative error above which the filter is said not to reproduce the module.
RECONSTRUCTION_TOL = 1e-4


def reconstruction_error(capture: Capture, max_samples: int = 4) -> tuple[float, str]:
    r"""Relative error of the module's output rebuilt from the capture (see the module
    docstring), over the first ``max_samples`` samples, and what was compared.

    Returns
    -------
    (float, str)
        ``nan`` and the reason where the check does not apply.
    """
    if capture.weights is None or capture.z is None:
        return math.nan, "not checked: no filter weights captured"
    if capture.module is None or capture.input is None:
        return math.nan, "not checked: no module or input to re-run"
    if capture.layernorm == "post":
        return math.nan, ("not checked: post-LN layer (the LayerNorm after the residual sum "
                          "is not part of the filter)")
    aff = capture.affinity
    if aff is None or not capture.square_graph:
        return math.nan, "not checked: the filter does not act on one square graph"
    S = min(int(capture.n_samples or 1), max_samples)
    F = filter_output(capture)[:S].double()                       # (S, N, C_out)
    outs = []
    with torch.no_grad():
        for i in range(S):
            fn, x = block_function(capture, i)
            with eval_mode(fn):
                outs.append(fn(x).double().cpu())
    Y = torch.cat(outs).flatten(2).transpose(1, 2)
    if Y.shape != F.shape:
        return math.nan, (f"not checked: the module's output has {tuple(Y.shape)} "
                          f"(samples, nodes, channels), the filter {tuple(F.shape)}")
    R = F.cpu()
    if capture.output_scale is not None:
        R = capture.output_scale.double().cpu() * R
    if capture.output_shift is not None:
        R = R + capture.output_shift.double().cpu()
    if capture.relu_after_norm:
        R = R.relu()
    if capture.residual:
        R = capture.input[:S].double().cpu().flatten(2).transpose(1, 2) + R
    err = float((R - Y).norm() / Y.norm().clamp_min(1e-300))
    form = "heads averaged" if capture.heads_averaged else "as captured"
    return err, (f"the module's output rebuilt from the captured filter ({form}) against the "
                 f"re-run module on {S} sample(s): relative error {err:.1e}")
