"""train(cfg): the body of ``train.py``. Composes data, model, callbacks, loggers and trainer from the Hydra
config, trains (resuming with ``ckpt_path=last``), validates, and writes ``<run dir>/results.json``."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from ppd_lightning import atomic

log = logging.getLogger("ppd_lightning.train")


def generate_synthetic(spec: dict | None) -> None:
    """Make the embedded synthetic world's shards if missing (idempotent, safe on every DDP rank)."""
    if not spec:
        return
    from ppd_lightning.data.make_shards import ensure_synthetic_shards

    for split, params in spec.items():
        ensure_synthetic_shards(**params)
        log.info("synthetic %s shards ready in %s", split, params["out_dir"])


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
        log.warning("ckpt_path=last but %s does not exist: starting from scratch", last)
        return None
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return ckpt_path


def init_dit_weights(model, source: str) -> None:
    """Start from given DiT weights (a released ppd.pth, an exported .safetensors, or one of our training
    checkpoints, whose EMA weights are taken), without optimizer state. Keys and shapes must match."""
    from ppd_lightning.official import load_strict, read_state_dict, take_prefix

    sd, name = read_state_dict(source)
    if "mean_target_count" in sd:  # one of our training checkpoints: prefer its EMA weights
        prefix = "ema_dit." if any(k.startswith("ema_dit.") for k in sd) else "dit."
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    else:  # released ppd.pth or an exported .safetensors
        sd = take_prefix(sd, "dit.", name)
    load_strict(model.dit, sd, name)
    if model.ema_dit is not None:
        model.ema_dit.load_state_dict(model.dit.state_dict())
    log.info("initialised the DiT from %s", name)


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for _, c in cfg.items() if c is not None and "_target_" in c]


def format_table(results: dict) -> str:
    rows = [("", "AbsRel (lower is better)", "delta1 (higher is better)")]
    for name in ("model", "baseline"):
        r = results.get(name) or {}
        rows.append((name, f"{r.get('abs_rel', float('nan')):.4f}", f"{r.get('delta1', float('nan')):.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def collect_results(metrics: dict[str, Any], val_name: str) -> dict:
    def get(prefix: str, key: str) -> float:
        v = metrics.get(f"{prefix}/{val_name}/{key}")
        return float(v) if v is not None else float("nan")

    return {
        "model": {k: get("val", k) for k in ("abs_rel", "delta1", "rmse")},
        "baseline": {k: get("val_baseline", k) for k in ("abs_rel", "delta1", "rmse")},
    }


def train(cfg: DictConfig) -> dict:
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)

    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    generate_synthetic(data_cfg.pop("generate", None))
    data_cfg.pop("render_size", None)  # only used by the generation spec
    datamodule = hydra.utils.instantiate(data_cfg)
    model = hydra.utils.instantiate(cfg.model)
    if cfg.get("init_dit"):
        init_dit_weights(model, cfg.init_dit)
    if cfg.get("compile"):
        # in place (nn.Module.compile): parameter names, checkpoints and EMA stay as without compile
        model.dit.compile()

    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    from ppd_lightning.training.checkpoint import AtomicCheckpointIO

    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if trainer.is_global_zero:
        log.info("run directory: %s", output_dir)
        atomic.write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    started = time.time()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    train_seconds = time.time() - started
    if not trainer.interrupted and not cfg.trainer.get("fast_dev_run"):
        # the end state, whatever the step-based checkpoint interval (collective: every rank calls it)
        trainer.save_checkpoint(
            output_dir / "checkpoints" / "last.ckpt", weights_only=False
        )  # full: resumable

    results: dict[str, Any] = {}
    if cfg.get("validate_after_fit", True) and datamodule.val_sources_cfg:
        metrics = trainer.validate(model, datamodule=datamodule, verbose=False)
        merged = {k: float(v) for d in metrics for k, v in d.items()}
        results = collect_results(merged, model.val_sets[0])
    results["run"] = {
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "train_seconds": round(train_seconds, 1),
        "skipped_steps": int(model.skipped_steps),
        "corrupt_samples": int(model.corrupt_samples),
        "parameters": model.parameter_counts(),
        "overrides": list(cfg.get("overrides") or []),
    }
    if trainer.is_global_zero:
        atomic.write_json(output_dir / "results.json", results)
        if "model" in results:
            print(
                f"\nHeld-out synthetic scenes ({model.val_sets[0]}), {results['run']['global_step']} steps, "
                f"{train_seconds / 60:.1f} min:\n{format_table(results)}\nresults: {output_dir / 'results.json'}"
            )
    objective = results.get("model", {}).get("abs_rel", math.nan)
    results["objective"] = objective
    return results
