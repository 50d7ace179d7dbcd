"""What ``submission.py --weights-dir`` trains on first use: the variant nets are trained on maps
made as ``variant_net.py`` makes them, so either command resumes the other's generation."""
from __future__ import annotations

import shutil

import pytest

import variant_net as vn
from models.zoo import DEMO_ZOO_DIR


class _Trained(Exception):
    pass


def test_first_use_nets_train_on_the_maps_variant_net_py_makes(tmp_path, monkeypatch):
    """The feature extractor runs its adapters in channels-last layout, whose maps go to a cache
    folder of their own (``variant_net_maps.maps_folder_name``); a net it trains on first use must
    read them in the default layout, as ``python variant_net.py`` does, or the maps of an interrupted
    ``variant_net.py`` run (the README's way to train ahead) are generated again from the start."""
    import feature_extractor
    import inv_decoder

    zoo = tmp_path / "zoo"
    shutil.copytree(DEMO_ZOO_DIR, zoo, ignore=shutil.ignore_patterns(vn.SHIPPED_SUBDIR))
    layouts = {}

    def train_and_save(inverse, path, config=None, progress=True, cache_dir=None):
        layouts[inverse.family] = inverse.channels_last
        raise _Trained

    monkeypatch.setattr(vn, "train_and_save", train_and_save)
    with pytest.raises(_Trained):
        feature_extractor.FeatureExtractor(weights_dir=zoo, inv_root=tmp_path / "inv", cache_dir=tmp_path / "features",
                                           net_root=tmp_path / "nets", progress=False)
    standalone = inv_decoder.inverse_adapter("VAR", zoo, tmp_path / "inv")  # variant_net.py's adapter
    assert layouts == {"VAR": standalone.channels_last}


def test_too_many_fine_tuning_images_are_refused_by_the_parser(tmp_path, capsys):
    """``--inv-decoder-images`` above what one fine-tuning seed has generation seeds for: one error
    line from the parser, not a ValueError traceback once the models are loaded."""
    import submission

    (tmp_path / "test").mkdir()
    with pytest.raises(SystemExit) as stop:
        submission.main(["--test", str(tmp_path / "test"), "--out", str(tmp_path / "s.csv"), "--inv-decoder-images", "100001"])
    assert stop.value.code == 2
    assert "--inv-decoder-images: at most 100,000, got 100001" in capsys.readouterr().err


def test_a_checkpoint_started_from_another_init_file_is_not_resumed(small_zoo_dir, tmp_path):
    """``init`` names a file by its path; a checkpoint begun from that path's earlier contents (the
    plain inverse decoder since retrained) is refused, not continued under a record that names the
    new file's sha256."""
    import inv_decoder
    from models.checkpoints import CheckpointError
    from models.zoo import load_family

    cfg = dict(images=6, epochs=1, batch_size=6, lr=3e-3, seed=0)
    inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "plain", cfg, progress=False)
    init = tmp_path / "plain" / "inv_decoder.safetensors"
    inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "aug", dict(cfg, init=init), progress=False)
    inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "plain", dict(cfg, epochs=2), progress=False)  # init retrained
    with pytest.raises(CheckpointError, match=r"other settings \(init_sha256\)"):
        inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "aug", dict(cfg, epochs=2, init=init), progress=False)
