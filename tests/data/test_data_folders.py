"""Image folders and local Hugging Face datasets: mixed sizes/modes convert, bad input fails clearly."""

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.data import HFImageDataset, ImageFolderDataset, get_dataset

RED, GREEN = (255, 0, 0), (0, 255, 0)


def _unit(v):
    return v / 127.5 - 1


@pytest.fixture
def mixed_folder(tmp_path):
    """a/: RGB 40x30 red png, L 50x50 gray jpg; b/: RGBA 20x20 green png (alpha 0), b/deep/ bmp."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "deep").mkdir(parents=True)
    Image.new("RGB", (40, 30), RED).save(tmp_path / "a" / "red.png")
    Image.new("L", (50, 50), 128).save(tmp_path / "a" / "gray.JPG", quality=100)
    Image.new("RGBA", (20, 20), GREEN + (0,)).save(tmp_path / "b" / "green.png")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "b" / "deep" / "small.bmp")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    return tmp_path


def test_mixed_sizes_and_modes_convert_to_one_shape(mixed_folder):
    ds = ImageFolderDataset(mixed_folder, resolution=16, channels=3)
    assert ds.classes == ["a", "b"] and len(ds) == 4
    assert [p.name for p in ds.files] == ["gray.JPG", "red.png", "small.bmp", "green.png"]
    assert ds.labels == [0, 0, 1, 1]
    items = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (3, 16, 16) and x.dtype == torch.float32 for x, _ in items)
    gray, red, small, green = (x for x, _ in items)
    assert torch.allclose(gray, torch.full_like(gray, _unit(128)), atol=0.02)
    assert torch.allclose(red, torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand_as(red), atol=1e-6)
    assert torch.allclose(green, torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand_as(green), atol=1e-6)
    want_small = _unit(torch.tensor([10.0, 20.0, 30.0])).view(3, 1, 1).expand_as(small)
    assert torch.allclose(small, want_small, atol=0.01)


def test_grayscale_output_is_mean_of_rgb(mixed_folder):
    ds = ImageFolderDataset(mixed_folder, resolution=8, channels=1)
    red, _ = ds[1]
    assert red.shape == (1, 8, 8)
    assert torch.allclose(red, torch.full_like(red, _unit(85.0)), atol=1e-5)


def test_resize_keeps_aspect_and_centre_crops(tmp_path):
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, 15:45] = 255  # white centre band, black sides
    Image.fromarray(img).save(tmp_path / "band.png")
    x, label = ImageFolderDataset(tmp_path, resolution=16)[0]
    # short side 20 -> 16 gives 48x16; the centre 16 columns all lie inside the white band
    assert label == 0 and torch.allclose(x, torch.ones_like(x), atol=0.02)


def test_missing_and_empty_folders_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
        ImageFolderDataset(missing)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no images .* found under .*empty"):
        get_dataset("folder", path=tmp_path / "empty")


def test_corrupt_file_is_named(tmp_path):
    (tmp_path / "cls").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cls" / "ok.png")
    (tmp_path / "cls" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        ImageFolderDataset(tmp_path)


def test_truncated_file_is_named_on_load(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    ds = ImageFolderDataset(tmp_path)  # header is fine
    with pytest.raises(ValueError, match=r"cannot read image .*cut\.png"):
        ds[0]


def test_bad_arguments_and_loose_files(mixed_folder):
    with pytest.raises(ValueError, match="channels must be 1"):
        ImageFolderDataset(mixed_folder, channels=4)
    Image.new("RGB", (8, 8)).save(mixed_folder / "loose.png")
    with pytest.raises(ValueError, match="loose.png lies directly"):
        ImageFolderDataset(mixed_folder)


def _tiny_hf(tmp_path, as_dict=False):
    import datasets  # a test extra
    features = datasets.Features(
        {"img": datasets.Image(), "digit": datasets.ClassLabel(names=["zero", "one", "two"])}
    )
    images = [Image.new("L", (12, 12), v) for v in (0, 255, 128, 64)]
    ds = datasets.Dataset.from_dict({"img": images, "digit": [0, 1, 2, 1]}, features=features)
    if as_dict:
        ds = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    ds.save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


def test_hf_load_from_disk_round_trip(tmp_path):
    path = _tiny_hf(tmp_path)
    ds = HFImageDataset(path, image_column="img", label_column="digit", resolution=8, channels=1)
    assert len(ds) == 4 and ds.classes == ["zero", "one", "two"] and ds.labels == [0, 1, 2, 1]
    values = [ds[i][0] for i in range(4)]
    assert all(x.shape == (1, 8, 8) for x in values)
    for x, v in zip(values, (0, 255, 128, 64)):
        assert torch.allclose(x, torch.full_like(x, _unit(v)), atol=1e-5)
    rgb = get_dataset("hf", path=path, image_column="img", label_column="digit", channels=3)
    assert rgb[1][0].shape == (3, 32, 32) and rgb[1][1] == 1


def test_hf_splits_and_errors(tmp_path):
    path = _tiny_hf(tmp_path, as_dict=True)
    kw = dict(image_column="img", label_column="digit")
    assert len(HFImageDataset(path, **kw)) == 4  # defaults to "train"
    assert len(HFImageDataset(path, split="test", **kw)) == 1
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]"):
        HFImageDataset(path, split="validation", **kw)
    with pytest.raises(ValueError, match="no column 'label'.*label_column=None"):
        HFImageDataset(path, image_column="img")
    unlabelled = HFImageDataset(path, image_column="img", label_column=None)
    assert unlabelled.labels == [0] * 4
    with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
        HFImageDataset(tmp_path / "missing")
