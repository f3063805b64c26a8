"""Train Pixel-Perfect Depth. `python train.py` runs the CPU demo on the embedded synthetic world;
`python train.py experiment=cascade_dit trainer.devices=8` the paper's 1024x768 stage. See README."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from ppd_lightning.errors import exit_on_user_error

    with (
        exit_on_user_error()
    ):  # one line `error: ...` (PPD_TRACEBACK=1: the traceback); README "What happens when…"
        from ppd_lightning.training.run import train

        return train(cfg)["objective"]


if __name__ == "__main__":
    main()
