"""Zero-shot depth evaluation (README, "Evaluation"), e.g.

    python evaluate.py protocol=marigold benchmark=nyuv2 benchmark.root=<DIR> \
        predictions=<DIR> hydra.run.dir=<OUT>
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from ppd_lightning.errors import exit_on_user_error

    with (
        exit_on_user_error()
    ):  # one line `error: ...` (PPD_TRACEBACK=1: the traceback); README "What happens when…"
        from ppd_lightning.evaluation.run import evaluate

        evaluate(cfg)


if __name__ == "__main__":
    main()
