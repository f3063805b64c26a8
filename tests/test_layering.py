"""The seams run one way: training -> evaluation -> weights/models. Evaluation, predict and the weights
layer load without Lightning, and no lower layer imports ``ppd_lightning.training`` (not even lazily)."""

import ast
import subprocess
import sys
from pathlib import Path

import torch

from ppd_lightning.models import CascadeSPDiT
from ppd_lightning.weights.checkpoints import METADATA_KEY, training_metadata

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
        "import ppd_lightning.weights, ppd_lightning.official, ppd_lightning.geometry\n"
        "import ppd_lightning.pointcloud, ppd_lightning.upsampling, ppd_lightning.video.run"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _module_name(path: Path) -> str:
    if not path.is_relative_to(SRC.parent):
        return path.stem  # a file outside the package: only absolute imports mean anything
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, with_scope: bool = False) -> list:
    """Every module ``path`` imports, at module level or inside a function, relative imports resolved
    (``from .codec import x`` in data/stream.py is ``ppd_lightning.data.codec``); with ``with_scope``,
    (module, enclosing function name or None) pairs."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope
            if isinstance(child, ast.Import):
                found.extend((a.name, scope) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                    if not child.module:  # from . import codec: each name is a module
                        found.extend((f"{module}.{a.name}", scope) for a in child.names)
                        continue
                else:
                    module = child.module
                found.append((module, scope))
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), None)
    return found if with_scope else [m for m, _ in found]


def _files(*names: str) -> list[Path]:
    files = []
    for n in names:
        files += sorted((SRC / n).rglob("*.py")) if (SRC / n).is_dir() else [SRC / n]
    assert files and all(f.is_file() for f in files), names
    return files


def _offenders(files: list[Path], banned: tuple[str, ...]) -> list[str]:
    return [f"{f.relative_to(SRC)}: {name}" for f in files for name in _imports(f) if name.startswith(banned)]


LIGHTNING = ("lightning", "pytorch_lightning")
TRAINING = ("ppd_lightning.training",)


def test_no_lower_layer_imports_training_or_lightning():
    # predict, evaluation, weights and the geometry / point-cloud / video code: no Lightning, no training/
    lower = _files("evaluation", "models", "weights", "official.py", "flow.py", "losses.py", "objective.py")
    lower += _files("geometry.py", "predict.py", "pointcloud.py", "upsampling.py", "video", "app.py")
    assert _offenders(lower, (*TRAINING, *LIGHTNING)) == []
    # data/ is Lightning's DataModule, but knows nothing of training or of the model
    assert _offenders(_files("data"), (*TRAINING, "ppd_lightning.models", "ppd_lightning.weights")) == []


def test_models_know_no_file_formats():
    # models/ reads no files: the one doorway to weights/ is the model classes' from_* constructors,
    # which import their reader inside the method (PixelPerfectDepth.from_released / from_checkpoint)
    formats = ("ppd_lightning.weights", "ppd_lightning.data", "ppd_lightning.evaluation", "safetensors")
    wrong = [
        f"{f.relative_to(SRC)}: {m} (in {scope or 'module'})"
        for f in _files("models")
        for m, scope in _imports(f, with_scope=True)
        if m.startswith(formats) and not (m.startswith("ppd_lightning.weights") and (scope or "").startswith("from_"))
    ]
    assert wrong == []


def test_relative_imports_are_resolved(tmp_path):
    pkg = tmp_path / "ppd_lightning" / "data"
    pkg.mkdir(parents=True)
    f = pkg / "m.py"
    f.write_text("from .codec import x\nfrom ..training import run\nfrom . import shards\n")
    global SRC
    old, SRC = SRC, tmp_path / "ppd_lightning"
    try:
        assert _imports(f) == ["ppd_lightning.data.codec", "ppd_lightning.training", "ppd_lightning.data.shards"]
    finally:
        SRC = old


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
        "from ppd_lightning.models.ppd import PixelPerfectDepth\n"
        f"m = PixelPerfectDepth.from_checkpoint({str(tmp_path / 'run.ckpt')!r})\n"
        "assert m.area == 16 * 24, m.area\n"
        "from ppd_lightning.predict import load_model\n"
        "import argparse\n"
        f"m = load_model(argparse.Namespace(ckpt={str(tmp_path / 'run.ckpt')!r}, no_ema=False, semantics=None))\n"
        "assert m.area == 16 * 24"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
