"""The training-side data pipeline: identity sampler, transforms, datasets, loaders, seeding."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from mmt_lib.data.loaders import (ImageDataset, IterLoader, TwoViewDataset, build_test_loader, build_train_loader,
                                   load_image)
from mmt_lib.data.sampler import IdentitySampler
from mmt_lib.data.transforms import (ERASING_FILL, IMAGENET_MEAN, IMAGENET_STD, build_test_transform,
                                     build_train_transform, torchvision_transform, train_padding)
from mmt_lib.runtime.seeding import derive_seed, seed_everything

H, W = 32, 16


def make_samples(layout: dict[int, list[int]]) -> list:
    """Samples from {pid: [camid of each image]}; paths are fake (sampler tests never open them)."""
    return [(f"/fake/{pid}_{n}.jpg", pid, cam) for pid, cams in layout.items() for n, cam in enumerate(cams)]


def groups(order: list[int], k: int) -> list[list[int]]:
    assert len(order) % k == 0
    return [order[i:i + k] for i in range(0, len(order), k)]


MIXED = {0: [0, 1, 1, 1, 1, 1], 1: [0, 0, 0, 1, 1, 1], 2: [2], 3: [0, 0], 4: [0, 1, 2, 3, 4], 5: [3, 3, 3, 3, 3]}


# ------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("epoch", range(5))
def test_sampler_groups_share_one_identity_and_every_identity_appears_once(epoch):
    samples = make_samples(MIXED)
    sampler = IdentitySampler(samples, num_instances=4, seed=3)
    sampler.set_epoch(epoch)
    order = list(sampler)
    assert len(order) == len(sampler) == 4 * len(MIXED)
    pids = [[samples[i][1] for i in g] for g in groups(order, 4)]
    assert all(len(set(g)) == 1 for g in pids)
    assert Counter(g[0] for g in pids) == Counter(MIXED.keys())


def test_sampler_prefers_other_cameras():
    # pid 0: 1 image in cam 0, 5 in cam 1. Anchor in cam 0 -> 3 distinct cam-1 images; anchor in cam 1 ->
    # the cam-0 image plus 2 distinct cam-1 images. Either way: cam-0 image exactly once, no repeats.
    # pid 1: 3 + 3 images: the anchor's camera appears exactly once (only the anchor).
    samples = make_samples({0: [0, 1, 1, 1, 1, 1], 1: [0, 0, 0, 1, 1, 1]})
    sampler = IdentitySampler(samples, num_instances=4, seed=0)
    anchors_seen = set()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        for group in groups(list(sampler), 4):
            cams = [samples[i][2] for i in group]
            assert len(set(group)) == 4, f"repeated image in {group}"
            if samples[group[0]][1] == 0:
                assert cams.count(0) == 1
                anchors_seen.add(cams[0])
            else:
                assert cams.count(cams[0]) == 1
    assert anchors_seen == {0, 1}, "both anchor cases should have been exercised"


def test_sampler_falls_back_to_same_camera_without_replacement():
    samples = make_samples({0: [5, 5, 5, 5, 5]})
    sampler = IdentitySampler(samples, num_instances=4, seed=1)
    for epoch in range(10):
        sampler.set_epoch(epoch)
        assert len(set(sampler)) == 4


def test_sampler_samples_small_identities_with_replacement():
    samples = make_samples({0: [0], 1: [0, 0], 2: [0, 1]})
    sampler = IdentitySampler(samples, num_instances=4, seed=0)
    for group in groups(list(sampler), 4):
        pid = samples[group[0]][1]
        members = {i for i, s in enumerate(samples) if s[1] == pid}
        assert len(group) == 4 and set(group) == members, "every image of a small identity is used"


def test_sampler_is_deterministic_per_seed_and_epoch():
    samples = make_samples({pid: [pid % 3, (pid + 1) % 3, 0, 1, 2] for pid in range(20)})

    def order(seed, epoch):
        sampler = IdentitySampler(samples, num_instances=4, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(7, 2) == order(7, 2)
    assert order(7, 2) != order(7, 3)
    assert order(7, 2) != order(8, 2)


def test_sampler_passes_differ_and_set_epoch_restarts_them():
    samples = make_samples({pid: [0, 1, 2, 3] for pid in range(20)})
    sampler = IdentitySampler(samples, num_instances=4, seed=0)
    sampler.set_epoch(4)
    first, second = list(sampler), list(sampler)
    assert first != second
    sampler.set_epoch(4)
    assert list(sampler) == first


@pytest.mark.parametrize("bad", [
    dict(samples=make_samples({0: [0, 1], -1: [0, 1]})),
    dict(samples=[]),
    dict(samples=make_samples({0: [0]}), num_instances=0),
    dict(samples=make_samples({0: [0]}), seed=-1),
])
def test_sampler_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        IdentitySampler(**bad)


def test_sampler_names_outliers_in_its_error():
    with pytest.raises(ValueError, match="2 of 4 samples have a negative identity"):
        IdentitySampler(make_samples({0: [0, 1], -1: [0, 1]}))


# ----------------------------------------------------------------------------------- transforms


def pixel_image(h: int = 48, w: int = 24, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def normalised_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


@pytest.mark.parametrize("erasing", [False, True])
def test_train_transform_shape_and_normalised_range(erasing):
    torch.manual_seed(0)
    out = build_train_transform(H, W, random_erasing=erasing)(pixel_image())
    low, high = normalised_bounds()
    assert out.shape == (3, H, W) and out.dtype == torch.float32
    assert torch.all(out >= low - 1e-5) and torch.all(out <= high + 1e-5)


def test_test_transform_is_deterministic_and_normalised():
    tf = build_test_transform(H, W)
    a, b = tf(pixel_image()), tf(pixel_image())
    low, high = normalised_bounds()
    assert a.shape == (3, H, W) and torch.equal(a, b)
    assert torch.all(a >= low - 1e-5) and torch.all(a <= high + 1e-5)
    gray = tf(Image.new("RGB", (W, H), (128, 128, 128)))
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(gray.mean(dim=(1, 2)), expected, atol=1e-4)


@pytest.mark.parametrize("h, w, image_size", [(64, 32, (64, 32)), (64, 32, (100, 41)), (32, 16, (32, 16))])
@pytest.mark.parametrize("kind", ["test", "train", "train+erasing"])
def test_transforms_draw_and_compute_exactly_as_torchvision(h, w, image_size, kind):
    """Same random draws in the same order and the same floats as the torchvision steps, so runs do
    not depend on which of the two computed them."""
    train, erasing = kind != "test", 0.5 if kind.endswith("erasing") else None
    ours = (build_train_transform(h, w, random_erasing=erasing is not None) if train
            else build_test_transform(h, w))
    reference = torchvision_transform(h, w, train, random_erasing=erasing is not None)
    images = [pixel_image(*image_size, seed=k) for k in range(3)] + [pixel_image(*image_size).convert("L")]
    for seed in range(8):
        for image in images:
            torch.manual_seed(seed)
            expected, after_reference = reference(image.convert("RGB")), torch.rand(3)
            torch.manual_seed(seed)
            got, after_ours = ours(image), torch.rand(3)
            assert torch.equal(got, expected)
            assert torch.equal(after_ours, after_reference), "the same number of random draws"


def test_train_padding_is_ten_pixels_at_paper_size_and_scales():
    assert train_padding(256) == 10
    assert train_padding(128) == 5
    assert train_padding(32) == 1
    assert train_padding(8) == 1


def test_erasing_fill_is_the_imagenet_mean():
    mean_pixel = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(mean_pixel), torch.full((3, 2, 2), ERASING_FILL))


@pytest.mark.parametrize("seed", range(5))
def test_random_erasing_fills_a_rectangle_with_the_mean(seed):
    h, w = 64, 32
    image = Image.new("RGB", (w, h), (200, 30, 90))  # normalised, no pixel of it (or of the black pad) is 0
    torch.manual_seed(seed)
    plain = build_train_transform(h, w, random_erasing=False)(image)
    assert not (plain == 0).any()
    torch.manual_seed(seed)
    out = build_train_transform(h, w, random_erasing=True, erasing_prob=1.0)(image)
    erased = (out == ERASING_FILL).all(dim=0)
    rows, cols = torch.nonzero(erased, as_tuple=True)
    assert len(rows) > 0, "p=1 must erase"
    box = erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all(), "the erased region is one rectangle"
    assert not ((out == 0).any(dim=0) & ~erased).any(), "all channels are filled together"
    assert 0.01 <= box.numel() / (h * w) <= 0.45  # 0.02-0.4 up to rounding of the side lengths


def test_erasing_probability_zero_never_erases():
    torch.manual_seed(0)
    tf = build_train_transform(64, 32, random_erasing=True, erasing_prob=0.0)
    image = Image.new("RGB", (32, 64), (200, 30, 90))
    assert not any((tf(image) == 0).any() for _ in range(10))


def test_transform_rejects_bad_parameters():
    with pytest.raises(ValueError, match="height"):
        build_test_transform(0, 16)
    with pytest.raises(ValueError, match="erasing_prob"):
        build_train_transform(32, 16, random_erasing=True, erasing_prob=1.5)


# -------------------------------------------------------------------------------------- loaders


@pytest.fixture(scope="module")
def image_samples(tmp_path_factory) -> list:
    """8 identities x 2 cameras x 2 images of 40x20 random pixels, written as JPEG and PNG."""
    root = tmp_path_factory.mktemp("images")
    samples = []
    for pid in range(8):
        for cam in range(2):
            for n in range(2):
                path = root / f"{pid:04d}_c{cam}_{n}.{'jpg' if n else 'png'}"
                pixel_image(40, 20, seed=pid * 10 + cam * 2 + n).save(path)
                samples.append((str(path), pid, cam))
    return samples


def test_image_dataset_items(image_samples):
    dataset = ImageDataset(image_samples, build_test_transform(H, W))
    image, pid, camid, index = dataset[5]
    assert len(dataset) == len(image_samples)
    assert image.shape == (3, H, W)
    assert (pid, camid, index) == (image_samples[5][1], image_samples[5][2], 5)


def test_grayscale_images_are_converted_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (10, 20), 77).save(path)
    assert load_image(path).mode == "RGB"


def test_missing_and_unreadable_images_name_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    for path in (missing, broken):
        with pytest.raises(OSError, match=str(path)):
            ImageDataset([(str(path), 0, 0)], build_test_transform(H, W))[0]


def test_two_view_dataset_gives_two_independent_views(image_samples):
    torch.manual_seed(0)
    dataset = TwoViewDataset(image_samples, build_train_transform(H, W, random_erasing=True))
    for index in range(4):
        view1, view2, pid, camid, idx = dataset[index]
        assert view1.shape == view2.shape == (3, H, W)
        assert not torch.equal(view1, view2)
        assert (pid, camid, idx) == (image_samples[index][1], image_samples[index][2], index)


class IndexDataset(Dataset):
    """Returns (index, pid): enough to check what the sampler feeds the loader, without images."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return index, self.samples[index][1]


def test_train_loader_batches_are_identity_balanced():
    samples = make_samples({pid: [0, 1, 1, 2] for pid in range(10)})
    loader = build_train_loader(IndexDataset(samples), samples, batch_size=8, num_instances=4,
                                num_workers=0, seed=0, epoch=0)
    batches = list(loader)
    assert len(batches) == 5  # 10 identities, 2 per batch
    seen = []
    for indices, pids in batches:
        assert indices.shape == (8,)
        assert [samples[i][1] for i in indices.tolist()] == pids.tolist()
        assert len(set(pids[:4].tolist())) == 1 and len(set(pids[4:].tolist())) == 1
        seen += pids[::4].tolist()
    assert sorted(seen) == list(range(10))


def test_train_loader_drops_the_incomplete_last_batch():
    samples = make_samples({pid: [0, 1, 2, 3] for pid in range(5)})
    loader = build_train_loader(IndexDataset(samples), samples, batch_size=8, num_instances=4,
                                num_workers=0, seed=0, epoch=0)
    assert [len(b[0]) for b in loader] == [8, 8]


@pytest.mark.parametrize("bad, match", [
    (dict(batch_size=6), "multiple of num_instances"),
    (dict(batch_size=48), "identities"),
    (dict(samples=make_samples({0: [0]})), "aligned"),
])
def test_train_loader_rejects_bad_input(bad, match):
    samples = make_samples({pid: [0, 1] for pid in range(4)})
    args = dict(dataset=IndexDataset(samples), samples=samples, batch_size=8, num_instances=4,
                num_workers=0, seed=0, epoch=0)
    with pytest.raises(ValueError, match=match):
        build_train_loader(**{**args, **bad})


def collect(image_samples, num_workers: int, seed: int, epoch: int) -> list:
    seed_everything(seed, epoch)
    loader = build_train_loader(
        TwoViewDataset(image_samples, build_train_transform(H, W, random_erasing=True)), image_samples,
        batch_size=8, num_instances=4, num_workers=num_workers, seed=seed, epoch=epoch,
    )
    return list(loader)


def same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x, y) for x, y in zip(batch_a, batch_b)) for batch_a, batch_b in zip(a, b)
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_loader_is_reproducible_per_seed_and_epoch(image_samples, num_workers):
    first = collect(image_samples, num_workers, seed=1, epoch=3)
    assert len(first) == 4
    view1, view2, pids, camids, indices = first[0]
    assert view1.shape == view2.shape == (8, 3, H, W)
    assert not torch.equal(view1, view2)
    assert pids.tolist() == [image_samples[i][1] for i in indices.tolist()]
    assert same_batches(first, collect(image_samples, num_workers, seed=1, epoch=3))
    assert not same_batches(first, collect(image_samples, num_workers, seed=1, epoch=4))


def test_worker_augmentations_do_not_depend_on_the_global_rng(image_samples):
    def run(global_seed):
        torch.manual_seed(global_seed)
        loader = build_train_loader(
            ImageDataset(image_samples, build_train_transform(H, W, random_erasing=True)), image_samples,
            batch_size=8, num_instances=4, num_workers=2, seed=5, epoch=0,
        )
        return list(loader)

    assert same_batches(run(0), run(12345))


def test_test_loader_keeps_order_and_last_batch(image_samples):
    loader = build_test_loader(ImageDataset(image_samples, build_test_transform(H, W)), batch_size=5, num_workers=0)
    batches = list(loader)
    assert [len(b[3]) for b in batches] == [5, 5, 5, 5, 5, 5, 2]
    assert torch.cat([b[3] for b in batches]).tolist() == list(range(len(image_samples)))


def test_iter_loader_yields_a_fixed_number_of_batches_across_passes():
    samples = make_samples({pid: [0, 1, 2, 3] for pid in range(6)})
    loader = build_train_loader(IndexDataset(samples), samples, batch_size=8, num_instances=4,
                                num_workers=0, seed=0, epoch=0)
    batches = [indices.tolist() for indices, _ in IterLoader(loader, iters=7)]
    assert len(batches) == 7 and len(IterLoader(loader, iters=7)) == 7
    passes = [sum(batches[i:i + 3], []) for i in (0, 3)]
    assert passes[0] != passes[1], "a restarted loader starts a new sampler pass"


def test_iter_loader_rejects_an_empty_loader():
    samples = make_samples({0: [0, 1]})
    loader = torch.utils.data.DataLoader(IndexDataset(samples), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="no batch"):
        list(IterLoader(loader, iters=3))
    with pytest.raises(ValueError, match="iters"):
        IterLoader(loader, iters=0)


# -------------------------------------------------------------------------------------- seeding


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_everything_is_a_function_of_seed_and_epoch():
    seed_everything(3, 2)
    first = draws()
    seed_everything(3, 2)
    assert draws() == first
    seed_everything(3, 5)
    assert all(a != b for a, b in zip(draws(), first))
    seed_everything(3)
    default = draws()
    seed_everything(3, 0)
    assert draws() == default


def test_derive_seed_mixes_and_validates():
    assert derive_seed(1, 2) == derive_seed(1, 2)
    assert len({derive_seed(s, e) for s in range(10) for e in range(10)}) == 100
    assert 0 <= derive_seed(2**40, 7) < 2**63
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1)
