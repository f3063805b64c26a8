"""Every experiment config composes and instantiates (data module, model, trainer) with the real targets."""

import warnings
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from ppd_lightning.training.module import PPDLightningModule

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:...} as in a real run
    return cfg


@pytest.fixture(scope="module")
def vitl_like_encoder(tmp_path_factory):
    """A depth_anything_v2-format file with ViT-L's width (1024) but one block: cheap, real format."""
    from ppd_lightning.models import SemanticEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = SemanticEncoder(embed_dim=1024, depth=1, num_heads=16, img_size=56)
    path = tmp_path_factory.mktemp("weights") / "depth_anything_v2_vitl.pth"
    torch.save({f"pretrained.{k}": v for k, v in enc.vit.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def moge2_like_encoder(tmp_path_factory):
    """A moge2.pt-format file with a 1024-wide read-out (the DiT's semantic width) on a tiny ViT."""
    from model_helpers import save_moge2

    path = tmp_path_factory.mktemp("weights") / "moge2.pt"
    return save_moge2(path, embed_dim=64, depth=1, intermediate_layers=1, dim_out=1024)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, moge2_like_encoder, tmp_path):
    cfg = _compose([f"experiment={experiment}", f"paths.data_dir={tmp_path}"])
    OmegaConf.resolve(cfg.model)
    if experiment in ("pretrain_512", "finetune_1024", "cascade_dit"):
        # the paper's settings, as composed
        assert (
            cfg.model.dit.hidden_size == 1024 and cfg.model.dit.depth == 24 and cfg.model.dit.num_heads == 16
        )
        # the release's configs prompt with MoGe-2; the DiT's semantic width follows the file's dim_out
        assert cfg.model.encoder.kind == "moge2" and cfg.model.dit.semantic_dim is None
        assert cfg.model.dit.variant == "cascade"
        assert cfg.model.optimizer.lr == 1e-4 and cfg.model.optimizer.weight_decay == 0.0
        assert OmegaConf.is_missing(cfg.model.encoder, "weights")  # the weights must be given
        assert cfg.trainer.strategy._target_.endswith("DDPStrategy")
        stage2 = experiment != "pretrain_512"
        assert cfg.data.train_size == ([768, 1024] if stage2 else [512, 512])
        assert cfg.model.grad_loss_weight == (0.2 if stage2 else 0.0)
        assert cfg.model.dit.grad_checkpointing == stage2
        if stage2:
            assert [s.weight for s in cfg.data.train_sources] == [0.5, 0.15, 0.15, 0.1, 0.1]
        with open_dict(cfg):  # instantiate at a small width with a real-format encoder file
            cfg.model.encoder.weights = str(moge2_like_encoder)
            cfg.model.dit.update(hidden_size=64, depth=2, num_heads=2)
            cfg.trainer.update(accelerator="cpu", devices=1, precision="32-true")
    if (
        experiment == "finetune_own"
    ):  # the released model on own data (tests/data/test_finetune_own.py runs it)
        assert cfg.model.optimizer.lr == 1e-5 and cfg.model.dit.hidden_size == 1024
        assert [s.name for s in cfg.data.val_sources] == ["own"]
        with open_dict(cfg):  # instantiate at a small width with the seeded random test encoder
            cfg.model.encoder = {"allow_random": True, "embed_dim": 32, "depth": 1, "num_heads": 2}
            cfg.model.dit.update(hidden_size=64, depth=2, num_heads=2, semantic_dim=32)
            cfg.trainer.update(accelerator="cpu", devices=1, precision="32-true")
    if experiment == "ablation":
        assert cfg.hydra.sweeper.params.model == "vanilla_dit,sp_dit,ppd"
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")  # a pure _target_ spec
    assert datamodule.batch_size >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = hydra.utils.instantiate(cfg.model)
    assert isinstance(model, PPDLightningModule)
    assert model.dit.variant == cfg.model.dit.variant
    if experiment in ("pretrain_512", "finetune_1024", "cascade_dit"):
        assert model.encoder.kind == "moge2" and model.dit.semantic_dim == 1024
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("experiment", ["pretrain_512", "finetune_1024"])
def test_depth_anything_semantics_are_one_override_away(experiment, vitl_like_encoder, tmp_path):
    cfg = _compose([f"experiment={experiment}", "encoder=vitl", f"paths.data_dir={tmp_path}"])
    assert cfg.model.encoder.kind == "da2" and cfg.model.dit.semantic_dim == 1024
    with open_dict(cfg):
        cfg.model.encoder.weights = str(vitl_like_encoder)
        cfg.model.dit.update(hidden_size=64, depth=2, num_heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = hydra.utils.instantiate(cfg.model)
    assert model.encoder.kind == "da2" and model.dit.semantic_dim == 1024


@pytest.mark.parametrize(
    "group, options",
    [
        ("model", ["ppd", "sp_dit", "vanilla_dit"]),
        ("model_size", ["tiny", "small", "base", "large"]),
        ("trainer", ["cpu", "gpu", "ddp", "ddp_sim", "fsdp"]),
        ("logger", ["csv", "wandb", "none"]),
        ("callbacks", ["default", "none"]),
        ("debug", ["fdr", "overfit", "limit"]),
        ("data", ["synthetic", "hypersim_512", "mix_1024"]),
        ("encoder", ["random_tiny", "vits", "vitb", "vitl", "vitg", "moge2"]),
    ],
)
def test_every_group_option_composes(group, options, tmp_path):
    for option in options:
        cfg = _compose([f"{group}={option}", f"paths.data_dir={tmp_path}"])
        assert cfg[group] is not None if group in cfg else True
        if group == "model_size":
            assert cfg.model.dit.hidden_size % cfg.model.dit.num_heads == 0
        if group == "encoder" and option != "random_tiny":
            width = {"vits": 384, "vitb": 768, "vitl": 1024, "vitg": 1536, "moge2": None}[option]
            assert cfg.model.dit.semantic_dim == width


def test_model_sizes_match_the_released_model():
    from ppd_lightning.models import CascadeSPDiT

    cfg = _compose(["model_size=large", "encoder=vitl"])
    with torch.device("meta"):
        dit = CascadeSPDiT(**{k: v for k, v in OmegaConf.to_container(cfg.model.dit).items()})
    assert sum(p.numel() for p in dit.parameters()) == 499_842_112


def test_slurm_launcher_composes_against_the_plugin_schema(tmp_path):
    """`python train.py -m launcher=slurm ...` (README): the launcher group is in the defaults list
    and every key we set exists in hydra-submitit-launcher's SlurmQueueConf (an unknown key fails
    to compose); nodes, GPUs and tasks follow the trainer."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose(
        [
            "launcher=slurm",
            "experiment=cascade_dit",
            "trainer.devices=8",
            "trainer.num_nodes=4",
            "hydra.launcher.partition=gpu",
            f"paths.data_dir={tmp_path}",
        ]
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (4, 8, 8)
    assert launcher.partition == "gpu" and launcher.timeout_min > 0
    # one SLURM task per GPU is what Lightning's SLURM environment expects
    assert cfg.trainer.devices * cfg.trainer.num_nodes == launcher.nodes * launcher.tasks_per_node
    # the node is the plugin's typed, struct SlurmQueueConf: a key it lacks is rejected
    assert type(launcher._metadata.object_type).__name__ == "type"
    assert launcher._metadata.object_type.__name__ == "SlurmQueueConf"
    with pytest.raises(Exception, match="not_a_slurm_key"):
        _compose(["launcher=slurm", "hydra.launcher.not_a_slurm_key=1", f"paths.data_dir={tmp_path}"])


def test_fsdp_config_builds_a_strategy_that_shards_the_dit_and_its_ema_alike(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = _compose(["trainer=fsdp", f"paths.data_dir={tmp_path}"])
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = hydra.utils.instantiate(cfg.model)
    wrapped = policy._run_policy(model, set(), {})  # the modules FSDP would make units of
    units = [n for n, m in model.named_modules() if m in wrapped]
    dit_units = [n.removeprefix("dit") for n in units if n == "dit" or n.startswith("dit.")]
    ema_units = [n.removeprefix("ema_dit") for n in units if n.startswith("ema_dit")]
    assert dit_units == ema_units and "" in dit_units  # the whole DiT and each of its blocks
    assert len(dit_units) == 1 + cfg.model.dit.depth
    assert not any(n.startswith("encoder") for n in units)


def test_gradient_clipping_under_fsdp_goes_through_the_root_module(monkeypatch):
    from types import SimpleNamespace
    from unittest.mock import PropertyMock

    from lightning.pytorch.strategies import FSDPStrategy

    from ppd_lightning.training.strategies import fsdp_strategy

    clipped = []
    root = SimpleNamespace(clip_grad_norm_=clipped.append)
    fake_trainer = SimpleNamespace(strategy=fsdp_strategy(), model=root)
    monkeypatch.setattr(PPDLightningModule, "trainer", PropertyMock(return_value=fake_trainer))
    module = object.__new__(PPDLightningModule)  # only the hook is exercised
    module.configure_gradient_clipping(None, 1.0, "norm")
    assert clipped == [1.0]
    with pytest.raises(ValueError, match="only norm clipping"):
        module.configure_gradient_clipping(None, 1.0, "value")
    assert isinstance(fake_trainer.strategy, FSDPStrategy)


def test_model_variants_are_one_line_overrides_of_the_one_model_config(tmp_path):
    """model=sp_dit / model=vanilla_dit differ from model=ppd (the release's Cas-DiT) in the DiT variant only;
    the name cascade_dit means the experiment alone."""
    base = OmegaConf.to_container(_compose([f"paths.data_dir={tmp_path}"]).model, resolve=True)
    assert base["dit"]["variant"] == "cascade"
    for option, variant in (("sp_dit", "sp_dit"), ("vanilla_dit", "vanilla")):
        cfg = OmegaConf.to_container(
            _compose([f"model={option}", f"paths.data_dir={tmp_path}"]).model, resolve=True
        )
        assert cfg["dit"].pop("variant") == variant
        assert cfg == {**base, "dit": {k: v for k, v in base["dit"].items() if k != "variant"}}
    assert not (REPO / "conf" / "model" / "cascade_dit.yaml").exists()
    with pytest.raises(Exception, match="cascade_dit"):
        _compose(["model=cascade_dit", f"paths.data_dir={tmp_path}"])
    # the release experiment keeps its name and its model
    assert _compose(["experiment=cascade_dit", f"paths.data_dir={tmp_path}"]).model.dit.variant == "cascade"


def test_validation_names_are_written_once_in_the_data_config(tmp_path):
    for experiment in EXPERIMENTS:
        cfg = _compose([f"experiment={experiment}", f"paths.data_dir={tmp_path}"])
        assert "val_sets" not in cfg.model, experiment


def test_data_config_is_a_pure_target_spec_that_generates_in_prepare_data(tmp_path):
    cfg = _compose(["experiment=smoke", f"paths.data_dir={tmp_path}"])
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    assert not any(tmp_path.iterdir())  # building it writes nothing
    dm.prepare_data()
    out = Path(cfg.data.generate.val.out_dir)
    assert out.name == "val" and out.parent.name == "synthetic_40x56" and list(out.glob("*.tar"))
    dm.setup("fit")
    assert dm.val_names == ["synthetic"]
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[-2:] == (32, 48)


@pytest.mark.parametrize("overrides", [["experiment=demo"], ["experiment=pretrain_512"]])
def test_demo_keeps_the_released_width_to_coarse_patch_ratio(overrides, tmp_path):
    """The released Cas-DiT's width equals the values in one coarse patch (1024 = 4 channels x 16 x 16); the CPU
    demo keeps that ratio (64 = 4 x 4 x 4), which is what made it learn faster per second than the 128-wide,
    p = 4 model (benchmarks/README.md "CPU demo ablation")."""
    cfg = _compose([*overrides, f"paths.data_dir={tmp_path}"])
    dit = cfg.model.dit
    assert dit.variant == "cascade"
    assert dit.hidden_size == dit.in_channels * (2 * dit.patch_size) ** 2
