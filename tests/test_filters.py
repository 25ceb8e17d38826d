"""The filter abstraction (graphfilters.filters) and the rational blocks (Cayley, ARMA).

References are independent: dense explicit inverses (``torch.linalg.inv``) of the spectral
definitions, exact eigendecompositions, sympy.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from graphfilters.blocks import ARMANonlocal, CayleyNonlocal, make_block
from graphfilters.filters import FILTER_NAMES, FILTERS, GraphOperator, filter_sum, get_filter
from graphfilters.graph import LowRankAffinity, SoftmaxAffinity
from graphfilters.specs import BASES
from graphfilters.symbolic import derive, response_function
from graphfilters.symbolic import symbols as S
from tests.test_blocks import randomize

C = 4
SHAPES = {1: (2, C, 7), 2: (2, C, 3, 4), 3: (2, C, 2, 3, 2)}
F64 = torch.float64




# ----------------------------------------------------------------------------------------
# the abstraction
def test_one_list_of_bases():
    assert BASES is FILTER_NAMES and set(FILTER_NAMES) >= {"chebyshev", "stable", "monomial",
                                                          "cayley", "arma"}
    with pytest.raises(ValueError, match="unknown basis 'x'"):
        get_filter("x")


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_values_equal_symbolic_basis(name):
    fam = FILTERS[name]
    order = 2
    params = {"cayley": {"zoom": 0.7}, "arma": {"poles": np.array([0.4, -0.3])}}.get(name)
    mu = np.linspace(-0.9, 0.9, 5)
    x = sp.Symbol("x")
    sym_params = None
    if name == "cayley":
        sym_params = {"zoom": sp.Float(0.7)}
    elif name == "arma":
        sym_params = {"poles": [sp.Float(0.4), sp.Float(-0.3)]}
    exprs = fam.symbolic(order, x, sym_params)
    sym = np.array([[complex(sp.sympify(e).subs(x, m)) for e in exprs] for m in mu])
    num = fam.values(mu, order, params)
    assert num.shape == (5, fam.n_terms(order))
    np.testing.assert_allclose(num, sym.real, atol=1e-12)
    # complex eigenvalues: the analytic continuation, consistent with the real values
    np.testing.assert_allclose(fam.values(mu + 0j, order, params).real, num, atol=1e-12)


@pytest.mark.parametrize("name", ["chebyshev", "monomial"])
def test_polynomial_terms_equal_values_on_eigenbasis(name):
    M = np.random.default_rng(0).random((6, 6))
    Sm = (M + M.T) / 2
    Sm /= np.abs(np.linalg.eigvalsh(Sm)).max()
    mu, U = np.linalg.eigh(Sm)
    fam = get_filter(name)
    terms = fam.terms(lambda X: Sm @ X, U, 3)
    vals = fam.values(mu, 3)
    for k, t in enumerate(terms):
        np.testing.assert_allclose(t, U * vals[:, k], atol=1e-12)


def test_filter_sum_is_the_one_sum():
    t = [torch.randn(2, 5, 3, dtype=F64) for _ in range(3)]
    W = [torch.randn(3, 4, dtype=F64), None, torch.randn(3, 4, dtype=F64)]
    ref = t[0] @ W[0] + t[2] @ W[2]
    torch.testing.assert_close(filter_sum(t, W), ref)
    torch.testing.assert_close(filter_sum(t, W, channels_first=True), ref.transpose(1, 2))
    with pytest.raises(ValueError, match="every weight is None"):
        filter_sum(t, [None] * 3)
    with pytest.raises(ValueError, match="4 weights for 3"):
        filter_sum(t, [1.0] * 4)


# ----------------------------------------------------------------------------------------
# shifted solves
def _lowrank(seed=0, n=40, r=3):
    g = torch.Generator().manual_seed(seed)
    P, Q = torch.rand(2, n, r, generator=g, dtype=F64), torch.rand(2, n, r, generator=g, dtype=F64)
    return LowRankAffinity(P, Q, symmetric=True).normalized("sym")


def _softmax(seed=0, n=30, c=3):
    g = torch.Generator().manual_seed(seed)
    th, ph = torch.randn(2, n, c, generator=g, dtype=F64), torch.randn(2, n, c, generator=g,
                                                                         dtype=F64)
    return SoftmaxAffinity(th, ph).normalized("rw")


@pytest.mark.parametrize("c", [0.9, -0.6, 0.7 / (0.7 + 1j)])
@pytest.mark.parametrize("kind", ["lowrank", "softmax"])
def test_shifted_solve_equals_explicit_inverse(kind, c):
    norm = _lowrank() if kind == "lowrank" else _softmax()
    op = GraphOperator.from_normalized(norm)
    assert op.method == ("woodbury" if kind == "lowrank" else "iterative")
    Z = torch.randn(2, norm.n, 3, dtype=F64)
    dense = norm.dense().to(torch.complex128)
    eye = torch.eye(norm.n, dtype=torch.complex128)
    ref = torch.linalg.inv(eye - c * dense) @ Z.to(torch.complex128)
    out = op.solve_shifted(c, Z)
    assert (out.to(torch.complex128) - ref).abs().max() < 1e-10
    if kind == "softmax":
        assert abs(op.inf_norm() - 1) < 1e-12 and op.iterations > 0


def test_iterative_solve_checks_its_convergence_condition():
    op = GraphOperator.from_normalized(_softmax())
    Z = torch.randn(2, 30, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"\|c\| \* \|\|S\|\|_inf < 1"):
        op.solve_shifted(1.0, Z)
    small = GraphOperator.from_normalized(_softmax(), max_iter=5)
    with pytest.raises(ValueError, match="max_iter"):
        small.solve_shifted(0.9, Z)


def test_woodbury_never_forms_an_n_by_n_matrix():
    norm = _lowrank(n=3000, r=4)
    op = GraphOperator.from_normalized(norm)
    U, V = op.factors
    assert U.shape == (2, 3000, 8) and V.shape == (2, 3000, 8)
    Z = torch.randn(2, 3000, 2, dtype=F64)
    Y = op.solve_shifted(0.5, Z)
    torch.testing.assert_close(Y - 0.5 * norm(Y), Z, atol=1e-10, rtol=0)   # (I - cS) Y = Z


# ----------------------------------------------------------------------------------------
# the rational blocks against a dense explicit-inverse reference
def _reference_filter(name, A, z, weights, params):
    """Spectral definitions with explicit inverses (no graphfilters.filters code)."""
    n = A.shape[-1]
    eye = torch.eye(n, dtype=torch.complex128)
    Ac = A.to(torch.complex128)
    zc = z.to(torch.complex128)
    terms = [z]
    if name == "cayley":
        h = params["zoom"].to(torch.complex128)
        L = eye - Ac
        Cm = (h * L - 1j * eye) @ torch.linalg.inv(h * L + 1j * eye)
        y = zc
        for _ in range((len(weights) - 1) // 2):
            y = Cm @ y
            terms += [y.real, y.imag]
    else:
        for p in params["poles"]:
            terms.append((torch.linalg.inv(eye - p * Ac) @ zc).real)
    return sum(t @ w for t, w in zip(terms, weights))


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("affinity", ["snl", "softmax"])
@pytest.mark.parametrize(("name", "order"), [("cayley", 1), ("cayley", 2), ("arma", 2)])
def test_rational_block_equals_dense_explicit_inverse(name, order, affinity, dim):
    block = make_block(name, C, dim=dim, order=order, affinity=affinity)
    block = randomize(block, seed=order + dim).double().eval()
    x = torch.randn(SHAPES[dim], dtype=F64)
    block.record = True
    with torch.no_grad():
        y, A = block(x, return_affinity=True)
        rec = block.last_record
        F = _reference_filter(name, A, rec.z, rec.weights, rec.params)
        ref = x + block.norm(F.transpose(1, 2).reshape(x.shape))
        dense = block(x, materialize=True)
    assert (y - ref).abs().max() < 1e-10
    assert (dense - ref).abs().max() < 1e-10
    torch.testing.assert_close(rec.block_output(), y, atol=1e-10, rtol=0)


def test_rational_blocks_classes_and_errors():
    assert isinstance(make_block("cayley", C), CayleyNonlocal)
    assert isinstance(make_block("arma", C, order=3), ARMANonlocal)
    b = make_block("arma", C, order=3)
    assert len(b.filter_weights()) == 4 and b.filter_parameters()["poles"].shape == (3,)
    assert len(make_block("cayley", C, order=2).filter_weights()) == 5
    assert "zoom=1" in repr(make_block("cayley", C))
    with pytest.raises(ValueError, match="unknown affinity"):
        make_block("arma", C, affinity="dot")
    with pytest.raises(ValueError, match="needs order >= 1"):
        make_block("arma", C, order=0)


@pytest.mark.parametrize("affinity", ["snl", "softmax"])
@pytest.mark.parametrize("name", ["cayley", "arma"])
def test_rational_block_gradcheck(name, affinity):
    block = randomize(make_block(name, 2, dim=1, inter_channels=2, affinity=affinity),
                      seed=4).double().eval()
    x = torch.randn(1, 2, 5, dtype=F64, requires_grad=True)
    params = [p for p in block.parameters() if p.requires_grad]

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(
            block, {n: p for (n, _), p in zip(block.named_parameters(), ps)}
        ):
            return block(x)

    inputs = (x, *[p.detach().clone().requires_grad_(True) for p in params])
    assert torch.autograd.gradcheck(f, inputs, atol=1e-7)


def test_rational_stage_shares_one_affinity():
    stage = randomize(make_block("arma", C, n_units=2, affinity="softmax"), seed=2).double()
    x = torch.randn(2, C, 3, 3, dtype=F64)
    u0, u1 = stage.units
    with torch.no_grad():
        aff = u0.compute_affinity(x)
        torch.testing.assert_close(stage.eval()(x), u1.eval()(u0.eval()(x, aff), aff))


# ----------------------------------------------------------------------------------------
# symbolic: derivations and responses on the captured spectrum
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("name", ["cayley", "arma"])
def test_rational_derivation_is_proved(name, order):
    d = derive(name, order=order)
    assert d.verified, str(d)
    text = str(d)
    assert "VERIFIED" in text and "\\" not in text
    tex = d.to_latex()
    assert tex.startswith("\\begin{align*}") and tex.count("\\\\") == len(d.steps) - 1


@pytest.mark.parametrize("name", ["cayley", "arma"])
def test_symbolic_response_equals_block_at_captured_eigenvalues(name):
    block = randomize(make_block(name, 2, dim=1, inter_channels=1), seed=7).double().eval()
    x = torch.randn(1, 2, 9, dtype=F64)
    block.record = True
    with torch.no_grad():
        _, A = block(x, return_affinity=True)
    rec = block.last_record
    mu, U = torch.linalg.eigh(A[0])
    # block filter on each eigenvector = response at its eigenvalue (C_s = 1 channel)
    z_eig = U.T[:, :, None]                                     # (N, N, 1): one graph per eig
    fam = get_filter(rec.spec.basis)
    op = GraphOperator(lambda v: A[0] @ v, dense=A[0])
    terms = fam.terms(op, z_eig, rec.spec.order, rec.params)
    out = filter_sum(terms, rec.weights)                          # (N, N, C_out)
    params = {k: v.numpy() for k, v in rec.params.items()}
    H = np.einsum("nk,kio->nio", fam.values(mu.numpy(), rec.spec.order, params),
                  np.stack([w.numpy() for w in rec.weights]))
    np.testing.assert_allclose(out.numpy(), U.T.numpy()[:, :, None] * H[:, 0, :][:, None, :],
                               atol=1e-10)
    # the sympy response at the captured eigenvalues (output channel 0)
    kw = {f"w_{k}": float(w[0, 0]) for k, w in enumerate(rec.weights)}
    if name == "cayley":
        kw["h"] = float(rec.params["zoom"])
    else:
        kw.update({f"psi_{k + 1}": float(p) for k, p in enumerate(rec.params["poles"])})
    h = response_function(name, **kw)
    np.testing.assert_allclose(h(1 - mu.numpy()), H[:, 0, 0], atol=1e-10)
    assert S.lam.name == "lambda"


# ----------------------------------------------------------------------------------------
# structure
def test_no_import_cycle_among_block_modules():
    """Every import among graphfilters/blocks/*.py (module level or inside functions)."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "graphfilters" / "blocks"
    graph = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[path.stem] = deps & {p.stem for p in folder.glob("*.py")}
    graph.pop("__init__")
    state = {}

    def visit(m, stack):
        if state.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*stack, m])}")
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in graph.get(m, ()):
            visit(d, [*stack, m])
        state[m] = 2

    for m in graph:
        visit(m, [])
    assert "factory" not in graph["stage"] and not graph["unified"] - {"_utils", "record"}


def test_kernels_come_from_the_registry():
    from graphfilters import kernels
    from graphfilters.blocks import KERNEL_OPTIONS
    from graphfilters.specs import KERNEL_NAMES

    assert KERNEL_NAMES == tuple(kernels.BLOCK_KERNELS) == tuple(KERNEL_OPTIONS)
    assert set(KERNEL_NAMES) <= set(kernels.KERNELS)


def test_plot_filter_families():
    import matplotlib

    matplotlib.use("Agg")
    from analysis.plots import plot_filter_families

    fig, ax = plot_filter_families()
    lines = ax.get_lines()
    assert len(lines) == 6                      # five curves and the zero line
    np.testing.assert_allclose(lines[2].get_ydata()[0], 1.0)            # T_3(1) = 1
    with pytest.raises(ValueError, match="has 3 terms"):
        plot_filter_families([("c", "cayley", 1, (1.0, 0.0), {})])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("affinity", ["snl", "softmax"])
@pytest.mark.parametrize("name", ["cayley", "arma"])
def test_rational_block_on_gpu_equals_cpu(name, affinity):
    block = randomize(make_block(name, C, order=2, affinity=affinity), seed=9).double().eval()
    x = torch.randn(2, C, 5, 4, dtype=F64)
    with torch.no_grad():
        cpu = block(x)
        gpu = block.to("cuda")(x.to("cuda")).cpu()
    assert (gpu - cpu).abs().max() < 1e-10
