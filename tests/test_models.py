"""Networks: head behaviour, IBN placement, last stride, and ImageNet weights from local files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mmt_lib.models import ReidNet, build_model, known_archs, share_initial_backbone
from mmt_lib.models.ibn import IBN
from mmt_lib.runtime.seeding import seed_everything

SMALL_ARCHS = ["cpu_tiny", "cpu_small", "resnet18"]
UNPICKLED: list[str] = []


class Payload:
    """An arbitrary object: unpickling it would run code (recorded in ``UNPICKLED``)."""

    def __reduce__(self):
        return (UNPICKLED.append, ("executed",))


def test_known_archs() -> None:
    assert set(known_archs()) == {"resnet50", "resnet_ibn50a", "resnet18", "cpu_small", "cpu_tiny"}
    with pytest.raises(ValueError, match="resnet50"):
        build_model("vgg16", 10)


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_train_and_eval_outputs(arch: str) -> None:
    torch.manual_seed(0)
    net = build_model(arch, num_classes=7).train()
    x = torch.randn(4, 3, 64, 32)
    f, logits = net(x)
    assert f.shape == (4, net.feature_dim) and logits.shape == (4, 7)
    assert (f >= 0).all(), "train mode must return the pre-BN pooled (post-ReLU) features"
    emb = net.eval()(x)
    assert emb.shape == (4, net.feature_dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    with torch.no_grad():
        pooled = net.pool(net.backbone(x)).flatten(1)
    assert torch.allclose(emb, F.normalize(net.bnneck(pooled), dim=1), atol=1e-6)


def test_head_initialisation_and_frozen_bn_bias() -> None:
    net = build_model("resnet50", num_classes=751)
    assert net.feature_dim == 2048
    assert torch.equal(net.bnneck.weight, torch.ones(2048)) and torch.equal(net.bnneck.bias, torch.zeros(2048))
    assert not net.bnneck.bias.requires_grad and net.bnneck.weight.requires_grad
    assert net.classifier.bias is None
    assert net.classifier.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert net.classifier.weight.mean().abs().item() < 1e-4


def test_bn_bias_receives_no_gradient() -> None:
    net = build_model("cpu_tiny", num_classes=3).train()
    f, logits = net(torch.randn(4, 3, 32, 16))
    (f.sum() + logits.sum()).backward()
    assert net.bnneck.bias.grad is None
    assert net.bnneck.weight.grad is not None


def test_dropout_only_in_train_mode() -> None:
    net = build_model("cpu_tiny", num_classes=3, dropout=0.5)
    assert isinstance(net.dropout, nn.Dropout)
    assert isinstance(build_model("cpu_tiny", num_classes=3).dropout, nn.Identity)
    with pytest.raises(ValueError, match="dropout"):
        build_model("cpu_tiny", num_classes=3, dropout=1.0)


def test_no_classifier_then_reset() -> None:
    net = build_model("cpu_tiny", num_classes=0).train()
    assert net.classifier is None and net.num_classes == 0
    x = torch.randn(4, 3, 32, 16)
    f, logits = net(x)
    assert logits is None and f.shape == (4, 64)
    centroids = F.normalize(torch.randn(5, 64), dim=1)
    net.reset_classifier(centroids)
    assert net.num_classes == 5 and net.classifier.bias is None
    assert torch.equal(net.classifier.weight, centroids) and net.classifier.weight.requires_grad
    assert net(x)[1].shape == (4, 5)


def test_reset_classifier_changes_class_count_and_keeps_dtype() -> None:
    net = build_model("cpu_tiny", num_classes=3).double()
    weights = torch.randn(9, 64)
    net.reset_classifier(weights)
    assert net.classifier.weight.dtype == torch.float64 and net.classifier.weight.shape == (9, 64)
    assert torch.allclose(net.classifier.weight, weights.double())
    weights.zero_()
    assert net.classifier.weight.abs().sum() > 0, "the classifier must own a copy of the weights"
    assert "classifier.weight" in net.state_dict()
    with pytest.raises(ValueError, match=r"\(K >= 1, 64\)"):
        net.reset_classifier(torch.randn(4, 32))


@pytest.mark.parametrize("arch", ["resnet50", "resnet_ibn50a"])
def test_last_stride_one(arch: str) -> None:
    net = build_model(arch, num_classes=0).eval()
    block = net.backbone.layer4[0]
    assert block.conv2.stride == (1, 1) and block.downsample[0].stride == (1, 1)
    assert net.backbone.layer3[0].conv2.stride == (2, 2)
    with torch.no_grad():
        fmap = net.backbone(torch.randn(1, 3, 64, 32))
    assert fmap.shape == (1, 2048, 4, 2)


def test_resnet18_last_stride_one() -> None:
    block = build_model("resnet18", num_classes=0).backbone.layer4[0]
    assert block.conv1.stride == (1, 1) and block.downsample[0].stride == (1, 1)


def test_ibn_in_layers_one_to_three_only() -> None:
    backbone = build_model("resnet_ibn50a", num_classes=0).backbone
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3):
        for block in layer:
            assert isinstance(block.bn1, IBN)
            width = block.conv1.out_channels
            assert block.bn1.IN.num_features == width // 2 and block.bn1.BN.num_features == width - width // 2
            assert block.bn1.IN.affine
            assert isinstance(block.bn2, nn.BatchNorm2d) and isinstance(block.bn3, nn.BatchNorm2d)
    assert all(isinstance(block.bn1, nn.BatchNorm2d) for block in backbone.layer4)
    plain = build_model("resnet50", num_classes=0).backbone
    assert not any(isinstance(m, IBN) for m in plain.modules())


def test_ibn_normalises_halves_separately() -> None:
    torch.manual_seed(0)
    ibn = IBN(6).train()
    x = torch.randn(3, 6, 4, 5) * 4 + 2
    out = ibn(x)
    assert torch.allclose(out[:, :3], F.instance_norm(x[:, :3]), atol=1e-5)
    assert torch.allclose(out[:, 3:], F.batch_norm(x[:, 3:], None, None, training=True), atol=1e-5)


@pytest.fixture(scope="module")
def torchvision_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.resnet50().state_dict()


def _assert_backbone_equals(net: ReidNet, state: dict[str, torch.Tensor]) -> None:
    loaded = net.backbone.state_dict()
    for name, tensor in loaded.items():
        assert torch.equal(tensor, state[name]), name


def test_load_torchvision_file(tmp_path: Path, torchvision_state: dict[str, torch.Tensor]) -> None:
    assert "fc.weight" in torchvision_state
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision_state, path)
    _assert_backbone_equals(build_model("resnet50", 10, pretrained=path), torchvision_state)


def test_load_wrapped_file_with_module_prefix(tmp_path: Path, torchvision_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "wrapped.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in torchvision_state.items()}, "epoch": 90}, path)
    _assert_backbone_equals(build_model("resnet50", 10, pretrained=str(path)), torchvision_state)


def test_load_ibn_file_without_batch_counters(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = build_model("resnet_ibn50a", 0).backbone.state_dict()
    state = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    state.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    path = tmp_path / "resnet50_ibn_a.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    torch.manual_seed(3)
    net = build_model("resnet_ibn50a", 10, pretrained=path)
    assert torch.equal(net.backbone.layer1[0].bn1.IN.weight, source["layer1.0.bn1.IN.weight"])
    _assert_backbone_equals(net, source)


def test_mismatched_keys_are_listed(tmp_path: Path, torchvision_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision_state, path)
    with pytest.raises(ValueError) as err:
        build_model("resnet_ibn50a", 10, pretrained=path)
    message = str(err.value)
    assert str(path) in message
    assert "layer1.0.bn1.IN.weight" in message and "layer1.0.bn1.weight" in message
    assert "missing keys" in message and "unexpected keys" in message


def test_wrong_shapes_are_listed(tmp_path: Path, torchvision_state: dict[str, torch.Tensor]) -> None:
    state = dict(torchvision_state)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="conv1.weight"):
        build_model("resnet50", 10, pretrained=path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_model("resnet50", 10, pretrained=path)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(16, 3, 3, 3), "extra": Payload()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        build_model("cpu_tiny", 10, pretrained=path)
    assert UNPICKLED == []


def test_networks_of_different_seeds_share_their_initial_backbone_and_nothing_else() -> None:
    """The paper's Stage I: the two networks start from the same weights and differ only by seed."""
    built = {}
    for seed in (1, 2):
        seed_everything(seed)
        built[seed] = build_model("cpu_tiny", 5)
    seed_everything(2)
    shared = build_model("cpu_tiny", 5)
    state = torch.get_rng_state()
    share_initial_backbone(shared, "cpu_tiny", seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the run's own random stream is untouched
    for name, value in built[1].backbone.state_dict().items():
        assert torch.equal(shared.backbone.state_dict()[name], value), name
        if value.is_floating_point() and value.numel() > 1 and "weight" in name and value.dim() > 1:
            assert not torch.equal(built[2].backbone.state_dict()[name], value), name
    assert torch.equal(shared.classifier.weight, built[2].classifier.weight)
    assert not torch.equal(shared.classifier.weight, built[1].classifier.weight)
