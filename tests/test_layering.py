"""The seams run one way: training -> evaluation -> weights/models. Evaluation, predict and the weights
layer load without Lightning, and no lower layer imports ``ppd_lightning.training`` (not even lazily)."""

import ast
import subprocess
import sys
from pathlib import Path

import torch

from ppd_lightning.models import CascadeSPDiT
from ppd_lightning.weights import METADATA_KEY, training_metadata

SRC = Path(__file__).resolve().parents[1] / "src" / "ppd_lightning"

NO_LIGHTNING = """
import sys
{body}
bad = sorted(m for m in sys.modules if m == "lightning" or m.startswith(("lightning.", "pytorch_lightning")))
assert not bad, bad[:5]
"""


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_LIGHTNING.format(body=body)], capture_output=True, text=True, timeout=300
    )


def test_evaluation_predict_and_weights_import_without_lightning():
    proc = _run(
        "import ppd_lightning.evaluation.run, ppd_lightning.evaluation.predictors, ppd_lightning.predict\n"
        "import ppd_lightning.weights, ppd_lightning.official, ppd_lightning.geometry"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _files(*names: str) -> list[Path]:
    files = []
    for n in names:
        files += sorted((SRC / n).rglob("*.py")) if (SRC / n).is_dir() else [SRC / n]
    assert files and all(f.is_file() for f in files), names
    return files


def _offenders(files: list[Path], banned: tuple[str, ...]) -> list[str]:
    return [f"{f.relative_to(SRC)}: {name}" for f in files for name in _imports(f) if name.startswith(banned)]


def test_no_lower_layer_imports_training_or_lightning():
    lower = _files("evaluation", "models", "weights", "official.py", "flow.py", "losses.py", "objective.py")
    lower += _files("geometry.py", "predict.py")
    assert _offenders(lower, ("ppd_lightning.training", "lightning", "pytorch_lightning")) == []
    # data/ is Lightning's DataModule, but knows nothing of training or of the model
    assert _offenders(_files("data"), ("ppd_lightning.training", "ppd_lightning.models")) == []


def test_the_static_check_sees_lazy_imports(tmp_path):
    # the check must catch an import inside a function, as the old evaluation/sources.py had
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from ppd_lightning.training.checkpoint import x\n    import lightning\n")
    assert _imports(f) == ["ppd_lightning.training.checkpoint", "lightning"]


def test_a_checkpoint_is_evaluated_without_lightning(tmp_path):
    """Rebuilding one of our checkpoints for evaluation or predict reads it without Lightning."""
    dit = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, variant="vanilla")
    model = CascadeSPDiT(**dit)
    ckpt = {
        "state_dict": {f"dit.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"dit": dit, "encoder": {}, "val_steps": 2},
        METADATA_KEY: training_metadata(dit, (16, 24)),
    }
    torch.save(ckpt, tmp_path / "run.ckpt")
    proc = _run(
        "from ppd_lightning.evaluation.predictors import checkpoint_model\n"
        f"m = checkpoint_model({str(tmp_path / 'run.ckpt')!r})\n"
        "assert m.area == 16 * 24, m.area\n"
        "from ppd_lightning.predict import load_model\n"
        "import argparse\n"
        f"m = load_model(argparse.Namespace(ckpt={str(tmp_path / 'run.ckpt')!r}, no_ema=False, semantics=None))\n"
        "assert m.area == 16 * 24"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
