"""Tests of graphfilters.models: the PreResNet backbone, block placement and config round trips."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from graphfilters.models import PreActBasicBlock, PreResNet, build_model, nonlocal_blocks

try:  # the real blocks, once graphfilters/blocks has landed
    from graphfilters.blocks import make_block
except ImportError:  # pragma: no cover - depends on the checkout
    make_block = None

needs_blocks = pytest.mark.skipif(make_block is None, reason="graphfilters.blocks not available")


class StandInNonlocal(nn.Module):
    """A small embedded-gaussian nonlocal stage: ``k`` units share one affinity.

    Identity at initialization (zero-initialized BN scale), like the real blocks.
    """

    def __init__(self, channels: int, n_units: int = 1, **options: object) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.options = options
        self.theta = nn.Conv2d(channels, inner, 1, bias=False)
        self.phi = nn.Conv2d(channels, inner, 1, bias=False)
        self.g = nn.ModuleList(nn.Conv2d(channels, inner, 1, bias=False) for _ in range(n_units))
        self.w = nn.ModuleList(nn.Conv2d(inner, channels, 1, bias=False) for _ in range(n_units))
        self.bn = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(n_units))
        for bn in self.bn:
            nn.init.zeros_(bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C_s)
        p = self.phi(x).flatten(2)  # (B, C_s, N)
        a = torch.softmax(t @ p, dim=-1)  # (B, N, N), shared by the units
        for g, wconv, bn in zip(self.g, self.w, self.bn, strict=True):
            z = g(x).flatten(2).transpose(1, 2)
            y = (a @ z).transpose(1, 2).reshape(b, -1, h, w)
            x = x + bn(wconv(y))
        return x


class RecordingFactory:
    """Block factory that records its calls and returns stand-in blocks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, dict]] = []

    def __call__(self, name: str, in_channels: int, dim: int = 2, **options: object) -> nn.Module:
        assert dim == 2
        self.calls.append((name, in_channels, dict(options)))
        return StandInNonlocal(in_channels, **options)


def test_preact_unit_shapes_and_projection():
    assert PreActBasicBlock(8, 8).shortcut is None
    unit = PreActBasicBlock(8, 16, stride=2)
    assert isinstance(unit.shortcut, nn.Conv2d)
    assert unit(torch.randn(2, 8, 8, 8)).shape == (2, 16, 4, 4)


def test_preresnet20_shapes_and_size():
    model = PreResNet(depth=20, num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    n_params = sum(p.numel() for p in model.parameters())
    assert 260_000 < n_params < 280_000  # the well-known 0.27M of ResNet-20
    assert [name for name, _ in model.layer1.named_children()] == ["unit1", "unit2", "unit3"]
    assert model.nonlocal_paths == [] and nonlocal_blocks(model) == []
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)  # any input size


def test_default_placement_is_the_papers_and_block_is_identity_at_init():
    factory = RecordingFactory()
    model = PreResNet(depth=20, block="snl", block_factory=factory)
    assert model.nonlocal_paths == ["layer1.nonlocal2"]
    assert factory.calls == [("snl", 16, {})]
    names = [name for name, _ in model.layer1.named_children()]
    assert names == ["unit1", "unit2", "nonlocal2", "unit3"]
    (path, module), = nonlocal_blocks(model)
    assert path == "layer1.nonlocal2" and isinstance(module, StandInNonlocal)

    # The backbone keys do not move when a block is inserted, and the block is the identity.
    plain = PreResNet(depth=20)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("layer1.nonlocal2.") for k in missing)
    plain.eval()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), plain(x))


def test_placements_channels_and_paths():
    factory = RecordingFactory()
    model = PreResNet(depth=14, width=4, block="nl", block_stages=(1, 2, 3),
                      block_positions=(0, 2), block_factory=factory)
    assert model.nonlocal_paths == [
        "layer1.nonlocal0", "layer1.nonlocal2", "layer2.nonlocal0", "layer2.nonlocal2",
        "layer3.nonlocal0", "layer3.nonlocal2",
    ]
    # position 0 acts on the stage input: the previous stage's width
    assert [c for _, c, _ in factory.calls] == [4, 4, 4, 8, 8, 16]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)

    explicit = PreResNet(depth=14, width=4, block="nl", placements=[(2, 1), (3, 2)],
                         block_factory=RecordingFactory())
    assert explicit.nonlocal_paths == ["layer2.nonlocal1", "layer3.nonlocal2"]
    assert build_model(explicit.config, RecordingFactory()).nonlocal_paths == [
        "layer2.nonlocal1", "layer3.nonlocal2"]


def test_blocks_per_position_independent_and_shared():
    factory = RecordingFactory()
    model = PreResNet(depth=8, width=4, block="snl", block_positions=(1,),
                      blocks_per_position=3, share_affinity=False, block_factory=factory)
    assert model.nonlocal_paths == [f"layer1.nonlocal1.{j}" for j in range(3)]
    assert len(factory.calls) == 3 and all("n_units" not in c[2] for c in factory.calls)
    assert len(nonlocal_blocks(model)) == 3

    factory = RecordingFactory()
    shared = PreResNet(depth=8, width=4, block="snl", block_positions=(1,),
                       blocks_per_position=3, share_affinity=True, block_factory=factory)
    assert shared.nonlocal_paths == ["layer1.nonlocal1"]
    assert factory.calls == [("snl", 4, {"n_units": 3})]
    assert shared(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_share_affinity_defaults_to_the_block_table():
    factory = RecordingFactory()
    model = PreResNet(depth=8, width=4, block="ns", block_positions=(1,),
                      blocks_per_position=2, block_factory=factory)
    assert model.config["share_affinity"] is True
    assert factory.calls == [("ns", 4, {"n_units": 2})]
    assert PreResNet(depth=8, width=4, block="nl", block_positions=(1,),
                     block_factory=RecordingFactory()).config["share_affinity"] is False


def test_block_options_are_forwarded_and_stored():
    factory = RecordingFactory()
    model = PreResNet(depth=8, width=4, block="nl", block_positions=(1,),
                      block_options={"mode": "dot_product"}, block_factory=factory)
    assert factory.calls[0][2] == {"mode": "dot_product"}
    assert model.config["block_options"] == {"mode": "dot_product"}


def test_config_json_round_trip():
    model = PreResNet(depth=14, num_classes=7, in_channels=1, width=4, block="snl",
                      block_stages=(1, 2), block_positions=(1,), blocks_per_position=2,
                      block_factory=RecordingFactory())
    config = json.loads(json.dumps(model.config))
    assert config == model.config
    rebuilt = build_model(config, block_factory=RecordingFactory())
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"depth": 21}, ValueError, "6n \\+ 2"),
        ({"depth": 8, "block": "snl", "block_positions": (2,)}, ValueError, "0..1"),
        ({"depth": 8, "block": "snl", "block_stages": (4,)}, ValueError, "1, 2 or 3"),
        ({"depth": 8, "block": "snl", "block_options": {"f": object()}}, TypeError, "JSON"),
        ({"depth": 8, "block": "snl", "block_options": {"n_units": 2}}, ValueError, "n_units"),
        ({"depth": 8, "width": 0}, ValueError, "width"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PreResNet(block_factory=RecordingFactory(), **kwargs)


def test_build_model_errors():
    with pytest.raises(ValueError, match="arch"):
        build_model({"depth": 8})
    with pytest.raises(ValueError, match="unknown key"):
        build_model({"arch": "preresnet", "depth": 8, "colour": "red"})
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        PreResNet(depth=8, width=4)(torch.randn(1, 1, 8, 8))


def test_nonlocal_blocks_through_a_wrapper():
    model = PreResNet(depth=8, width=4, block="snl", block_positions=(1,),
                      block_factory=RecordingFactory())

    class Wrapper(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    (path, block), = nonlocal_blocks(Wrapper(model))
    assert path == "module.layer1.nonlocal1" and block is model.layer1.nonlocal1


@needs_blocks
@pytest.mark.parametrize("name", ["nl", "snl"])
def test_real_blocks_in_preresnet(name):
    model = PreResNet(depth=8, width=4, block=name, block_positions=(1,))
    (path, block), = nonlocal_blocks(model)
    assert path == "layer1.nonlocal1"
    assert type(block).__module__.startswith("graphfilters.blocks")
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 10)
    # identity at initialization: the backbone alone gives the same output
    plain = PreResNet(depth=8, width=4)
    model.load_state_dict(plain.state_dict(), strict=False)
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(x), plain(x))
    # round trip through the config, with the default factory
    rebuilt = build_model(json.loads(json.dumps(model.config)))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), model(x))


@needs_blocks
def test_real_shared_stage():
    model = PreResNet(depth=8, width=4, block="snl", block_positions=(1,),
                      blocks_per_position=2, share_affinity=True)
    assert model.nonlocal_paths == ["layer1.nonlocal1"]
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@needs_blocks
@pytest.mark.parametrize("name", ["nl", "ns", "a2", "cgnl", "cc", "dnl", "snl", "gsnl",
                                  "gsnl_stable"])
def test_every_table_block_fits_in_preresnet(name):
    torch.manual_seed(0)
    model = PreResNet(depth=8, width=4, block=name, block_positions=(1,))
    plain = PreResNet(depth=8, width=4)
    model.load_state_dict(plain.state_dict(), strict=False)
    model.eval()
    plain.eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), plain(x))  # identity at initialization
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@needs_blocks
def test_nonlocal_blocks_in_a_custom_model():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), make_block("snl", 8),
                        nn.Sequential(nn.ReLU(), make_block("snl", 8, n_units=2)))
    found = nonlocal_blocks(net)
    assert [path for path, _ in found] == ["1", "2.1"]  # outermost blocks only
