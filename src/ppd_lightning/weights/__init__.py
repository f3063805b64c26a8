"""Weights I/O, below both training and evaluation (no Lightning here): every weight format read with
``torch.load(..., weights_only=True)`` or safetensors, models and encoders built from them, and export.
The public names are in :mod:`ppd_lightning.official`; inside the package, import the module that holds a
name (this package re-exports nothing, so each name has one home):

- :mod:`.files`: the one safe reader (``load_torch_file``), :class:`~.files.StateDict` (tensors + the file
  name every error uses), prefixes, strict loading;
- :mod:`.checkpoints`: our training checkpoints: recognition, recorded metadata, :func:`~.checkpoints.dit_state`
  (the one place that picks the (EMA) DiT weights out of any source), the model they rebuild, DiT export;
- :mod:`.released`: the released ``ppd.pth``/``ppd_moge.pth`` DiTs and a released model from its files;
- :mod:`.encoders`: the frozen semantic encoder from a released file (by content), a config or a
  checkpoint's recorded spec;
- :mod:`.moge2`, :mod:`.ppvd`: MoGe-2's geometry model, the video DiT and Pi3's semantics;
- :mod:`.hub`: released models by name (the Hub's files, Google-Drive-only files in a weights folder).
"""
