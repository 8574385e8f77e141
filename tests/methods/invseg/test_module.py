"""InvSeg as a LightningModule: tools/eval.py end to end, class filtering, weights lookup, optional imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ovs.cli import REPO_ROOT
from ovs.data import IGNORE_INDEX
from ovs.data.fake import write_fake_pascal_voc
from ovs.methods.invseg.filtering import ClassFilter
from ovs.methods.invseg.weights import find_stable_diffusion
from tests.methods.invseg.conftest import require_diffusers

TINY_CONFIG = REPO_ROOT / "configs" / "invseg_tiny_synthetic.yaml"


def test_one_image_through_tools_eval(tmp_path: Path) -> None:
    require_diffusers()
    labels = write_fake_pascal_voc(tmp_path / "datasets", num_images=1, height=40, width=56)["21"]
    label = next(iter(labels.values()))
    present = {int(c) for c in np.unique(label)} - {0, 255}  # foreground classes of the fake image
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "eval.py"), "--config", str(TINY_CONFIG), "--datasets", "voc21",
         "--dataset_root", str(tmp_path / "datasets"), "--model.init_args.num_overlays=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "| voc21 |" in process.stdout
    (results,) = (tmp_path / "outputs" / "invseg_tiny_synthetic").glob("*/results.json")
    data = json.loads(results.read_text())
    (row,) = data["results"] if isinstance(data, dict) else data
    assert row["dataset"] == "voc21"
    assert 0.0 <= row["mIoU"] <= 100.0 and 0.0 <= row["mAcc"] <= 100.0
    assert row["candidates_per_image"] == len(present)
    assert np.isfinite(row["loss_first"]) and np.isfinite(row["loss_last"]) and row["seconds_per_image"] > 0


def test_oracle_candidates_are_the_foreground_classes_in_the_labels() -> None:
    target = torch.tensor([[0, 3, 3], [7, IGNORE_INDEX, 0]])
    names = [[f"class {i}"] for i in range(10)]
    assert ClassFilter("oracle").candidates(torch.zeros(3, 2, 3), target, names, 0) == [3, 7]
    assert ClassFilter("oracle").candidates(torch.zeros(3, 2, 3), target, names, None) == [0, 3, 7]
    assert ClassFilter("all").candidates(torch.zeros(3, 2, 3), None, names, 0) == list(range(1, 10))
    with pytest.raises(ValueError, match="ground-truth"):
        ClassFilter("oracle").candidates(torch.zeros(3, 2, 3), None, names, 0)


def test_clip_filter_keeps_the_smallest_top_set_reaching_top_p(tiny_vit, monkeypatch) -> None:
    names = [[n] for n in ("background", "cat", "dog", "car", "tree", "sky")]
    chooser = ClassFilter("clip_filter", top_p=0.9, k_max=3, clip=tiny_vit)
    image = torch.rand(3, 40, 50) * 255
    probabilities = chooser.class_probabilities(image, names, [1, 2, 3, 4, 5])
    assert probabilities.shape == (5,) and abs(float(probabilities.sum()) - 1) < 1e-5
    # selection rule on known probabilities (over foreground classes 1..5)
    fixed = torch.tensor([0.04, 0.6, 0.02, 0.28, 0.06])
    monkeypatch.setattr(chooser, "class_probabilities", lambda *_: fixed)
    assert chooser.candidates(image, None, names, 0) == [2, 4, 5]  # 0.6 + 0.28 = 0.88 < 0.9 -> a third class
    chooser.k_max = 2
    assert chooser.candidates(image, None, names, 0) == [2, 4]
    chooser.top_p, chooser.k_max = 0.5, 8
    assert chooser.candidates(image, None, names, 0) == [2]


def test_missing_weights_name_the_folders_and_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        find_stable_diffusion("stabilityai/stable-diffusion-2-1-base", cache_dir=tmp_path / "hub")
    message = str(info.value)
    assert str(tmp_path / "hub" / "models--stabilityai--stable-diffusion-2-1-base" / "snapshots") in message
    assert "hf download stabilityai/stable-diffusion-2-1-base" in message
    folder = tmp_path / "sd21"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=f"Searched: {folder}.*unet/, vae/"):
        find_stable_diffusion(str(folder))


def test_a_cached_snapshot_is_found_through_refs_main(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--org--sd"
    for snapshot in ("aaa", "bbb"):
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            (repo / "snapshots" / snapshot / sub).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaa\n")
    assert find_stable_diffusion("org/sd", cache_dir=tmp_path / "hub") == repo / "snapshots" / "aaa"


def test_missing_weights_through_the_module(tmp_path: Path, monkeypatch) -> None:
    require_diffusers()
    from ovs.methods.invseg import InvSeg

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"not found \(ovs never downloads\).*hf download"):
        InvSeg(pretrained="stabilityai/stable-diffusion-2-1-base")


def test_import_ovs_and_invseg_without_diffusers() -> None:
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'diffusers':\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import ovs, ovs.methods.invseg\n"
        "assert 'diffusers' not in sys.modules\n"
        "from ovs.methods.invseg import InvSeg\n"
        "try:\n"
        "    InvSeg(tiny={'seed': 0})\n"
        "except ImportError as err:\n"
        "    assert 'make install-diffusion' in str(err), err\n"
        "    print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0 and process.stdout.strip() == "ok", process.stderr[-2000:]


def test_categories_map_to_dataset_ids_with_and_without_a_background_class(tiny_sd, monkeypatch) -> None:
    require_diffusers()
    import copy
    import dataclasses

    from ovs.methods.invseg import InvSeg
    from ovs.methods.invseg.inversion import InversionResult

    model = InvSeg(model=dataclasses.replace(tiny_sd, unet=copy.deepcopy(tiny_sd.unet)),
                   invseg={"image_size": 64, "attention_resolutions": [8]})
    maps = torch.zeros(3, 8, 8)  # categories: class 2, class 5, background (last)
    maps[0, :, :4] = 1.0  # left half -> class 2
    maps[1, :4, 4:] = 1.0  # top right -> class 5
    maps[2, 4:, 4:] = 1.0  # bottom right -> background
    monkeypatch.setattr(model.inverter, "invert", lambda *a, **k: InversionResult(maps, torch.zeros(1), [1.0, 0.5],
                                                                                   [0.0], [0.0], 0.1))
    names = [[f"class {i}"] for i in range(6)]
    target = torch.tensor([[2, 5], [0, 0]])
    labels, stats = model.segment_image(torch.zeros(3, 16, 16), names, 0, (16, 16), target)
    expected = torch.zeros(16, 16, dtype=torch.long)
    expected[:, :8] = 2
    expected[:8, 8:] = 5
    torch.testing.assert_close(labels, expected)  # background -> class 0, nearest x2 upsampling
    assert stats["loss_first"] == 1.0 and stats["loss_last"] == 0.5 and stats["candidates_per_image"] == 2
    no_background_target = torch.tensor([[2, 5], [5, 2]])
    labels, _ = model.segment_image(torch.zeros(3, 16, 16), names, None, (16, 16), no_background_target)
    torch.testing.assert_close(labels[:8], expected[:8])  # background pixels take the best foreground category
    assert set(labels[8:, 8:].unique().tolist()) <= {2, 5}


def test_a_saved_diffusers_folder_loads_offline_with_the_same_weights(tiny_sd, tmp_path: Path) -> None:
    require_diffusers()
    from diffusers import DDPMScheduler

    from ovs.methods.invseg import load_stable_diffusion

    folder = tmp_path / "sd"
    tiny_sd.unet.save_pretrained(folder / "unet")
    tiny_sd.vae.save_pretrained(folder / "vae")
    tiny_sd.text_encoder.save_pretrained(folder / "text_encoder")
    tiny_sd.tokenizer.save_pretrained(folder / "tokenizer")
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").save_pretrained(folder / "scheduler")
    loaded = load_stable_diffusion(str(folder))
    assert loaded.source == str(folder) and loaded.scaling_factor == tiny_sd.scaling_factor
    for name in ("unet", "vae", "text_encoder"):
        original, reloaded = getattr(tiny_sd, name).state_dict(), getattr(loaded, name).state_dict()
        assert original.keys() == reloaded.keys()
        assert all(torch.equal(original[k], reloaded[k]) for k in original)
    torch.testing.assert_close(loaded.alphas_cumprod, tiny_sd.alphas_cumprod)
    text = "cat tvmonitor potted plant background"
    assert loaded.tokenizer(text).input_ids == tiny_sd.tokenizer(text).input_ids
    assert loaded.tokenizer.pad_token_id == tiny_sd.tokenizer.pad_token_id


def test_precomputed_names_are_united_over_keys_and_mapped_through_synonyms(tmp_path: Path) -> None:
    data = {
        "image_similarity": {"JPEGImages/2007_000001.jpg": ["cat", "plane"], "JPEGImages/2007_000002.jpg": ["dog"]},
        "text_similarity": {"JPEGImages/2007_000001.jpg": ["people", "unicorn"]},
        "synonym_matching": {"JPEGImages/2007_000001.jpg": ["dog"]},
    }
    path = tmp_path / "names.json"
    path.write_text(json.dumps(data))
    names = [["background"], ["aeroplane", "airplane"], ["cat"], ["dog"], ["person"]]
    chooser = ClassFilter("precomputed", precomputed=str(path), synonyms={"plane": "airplane", "people": "person"})
    image = torch.zeros(3, 4, 4)
    assert chooser.candidates(image, None, names, 0, "images/2007_000001.jpg") == [1, 2, 4]
    assert chooser.candidates(image, None, names, 0, "2007_000002.png") == [3]
    with pytest.raises(KeyError, match="2007_000003"):
        chooser.candidates(image, None, names, 0, "2007_000003.jpg")
    with pytest.raises(KeyError, match="caption"):
        ClassFilter("precomputed", precomputed=str(path), keys=("caption",))
    with pytest.raises(FileNotFoundError, match="class_filter.precomputed"):
        ClassFilter("precomputed")
