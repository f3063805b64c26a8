"""The released models by name: which files each needs, where they come from, and where they are on disk.

Pure file resolution (nothing is built here): ``released("ppd")`` gives the local paths of the model's files,
downloading what the Hugging Face Hub has through ``huggingface_hub`` (its cache, resumption, progress bars,
``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, tokens) and finding the files published on
Google Drive only in a weights folder.

======== ====== ======================================================================================
name     kind   files (role: file in a weights folder <- source)
======== ====== ======================================================================================
ppd      image  dit: ``ppd.pth`` <- gangweix/Pixel-Perfect-Depth;
                semantics: ``depth_anything_v2_vitl.pth`` <- depth-anything/Depth-Anything-V2-Large
ppd-moge2 image dit: ``ppd_moge.pth`` <- Google Drive only;
                semantics and geometry: ``moge2.pt`` <- Ruicheng/moge-2-vitl-normal ``model.pt``
ppvd     video  dit: ``ppvd.pth`` <- Google Drive only; semantics: ``pi3.safetensors`` <- yyfz233/Pi3
                ``model.safetensors``
moge2    geometry  geometry: ``moge2.pt`` <- Ruicheng/moge-2-vitl-normal ``model.pt``
======== ====== ======================================================================================

Lookup order, for every file: the weights folders, in order (1) ``weights_dir`` (``--weights-dir``), (2)
``$PPD_WEIGHTS_DIR``, (3) the default folder ``$XDG_CACHE_HOME/ppd-lightning`` (``~/.cache/ppd-lightning``),
each holding files under the names above (the release's own ``checkpoints/`` layout, so that folder works
as it is); then, for a Hub file, ``hf_hub_download`` (the Hub cache, else a download). A file found in a
weights folder is used as it is, with no network call (offline machines); the folders come first because a
file put there by hand is the user's explicit choice. A Google-Drive-only file found nowhere is one
:class:`WeightsNotFoundError` saying where to download it and where to put it.

Every file found is checked before it is returned: it must open with the project's reader (a safetensors
header, or a ``weights_only`` ``torch.load`` memory-mapped so that no tensor data is read) and carry its
model's content signature (e.g. ``ppd.pth``'s ``dit.x_embedder.proj.weight``). A web page saved in place of
the file, a truncated file or another model's file is one :class:`~ppd_lightning.errors.CheckpointError`
naming the file and what to do. Environment variables are read at each call, not at import.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import torch

from ppd_lightning.errors import CheckpointError, InputError, MissingFileError
from ppd_lightning.weights.files import load_torch_file, preview

__all__ = [
    "RELEASED",
    "WEIGHTS_DIR_ENV",
    "ModelFiles",
    "ReleasedFile",
    "ReleasedModel",
    "Signature",
    "UnknownModelError",
    "WeightsNotFoundError",
    "check_released_file",
    "default_weights_dir",
    "hub_cache_dir",
    "is_released_name",
    "released",
    "released_model",
    "resolve_file",
    "resolve_model_files",
    "weights_dirs",
]

WEIGHTS_DIR_ENV = "PPD_WEIGHTS_DIR"
RELEASE_README = "https://github.com/gangweix/pixel-perfect-depth"
Kind = Literal["image", "video", "geometry"]
ROLES = ("dit", "semantics", "geometry")
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class WeightsNotFoundError(MissingFileError):
    """A released file that is neither in a weights folder nor obtainable from the Hub (offline and not
    cached, not on the server, no connection, or published on Google Drive only); the message names the
    file, where to get it and where to put it."""


class UnknownModelError(InputError):
    """A model name that is not one of the released models."""


@dataclass(frozen=True)
class Signature:
    """What a file's content must hold: a mapping with every key of ``keys`` and, for each of ``prefixes``,
    a key starting with it; with ``inner``, also a mapping under that key with a key starting with each of
    ``inner_prefixes`` (MoGe-2's ``{'model_config', 'model': state dict}``)."""

    what: str
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    inner: str | None = None
    inner_prefixes: tuple[str, ...] = ()

    def matches(self, obj: object) -> bool:
        if not (isinstance(obj, Mapping) and all(k in obj for k in self.keys) and _has(obj, self.prefixes)):
            return False
        return self.inner is None or (
            isinstance(obj.get(self.inner), Mapping) and _has(obj[self.inner], self.inner_prefixes)
        )


def _has(mapping: Mapping, prefixes: tuple[str, ...]) -> bool:
    return all(any(isinstance(k, str) and k.startswith(p) for k in mapping) for p in prefixes)


@dataclass(frozen=True)
class ReleasedFile:
    """One released weights file: ``filename`` is its name in a weights folder; on the Hub it is
    ``hub_filename`` in ``repo_id`` (``repo_id`` None: published on Google Drive only)."""

    filename: str
    what: str
    signature: Signature
    download_url: str
    repo_id: str | None = None
    hub_filename: str | None = None
    revision: str = "main"

    @property
    def on_hub(self) -> bool:
        return self.repo_id is not None

    def describe(self) -> str:
        source = f"{self.repo_id} '{self.hub_filename}'" if self.on_hub else "Google Drive only"
        return f"{self.filename} ({self.what}; {source})"


@dataclass(frozen=True)
class ReleasedModel:
    """A released model: its name, kind and the file of each role (None where it has none)."""

    name: str
    kind: Kind
    summary: str
    dit: ReleasedFile | None = None
    semantics: ReleasedFile | None = None
    geometry: ReleasedFile | None = None

    def files(self) -> dict[str, ReleasedFile]:
        return {role: f for role in ROLES if (f := getattr(self, role)) is not None}


@dataclass(frozen=True)
class ModelFiles:
    """Local paths of a model's files. ``name``/``kind``: the released model they come from (None for files
    given only by path)."""

    dit: Path | None = None
    semantics: Path | None = None
    geometry: Path | None = None
    name: str | None = None
    kind: Kind | None = None


def _hub_url(repo_id: str, filename: str) -> str:
    return f"https://huggingface.co/{repo_id}/resolve/main/{filename}"


DIT_SIGNATURE = Signature(
    "a PPD DiT state dict ('dit.x_embedder.proj.weight', ...)", keys=("dit.x_embedder.proj.weight",)
)
DA2_SIGNATURE = Signature(
    "Depth Anything V2's state dict ('pretrained.patch_embed.proj.weight', ...)",
    keys=("pretrained.patch_embed.proj.weight",),
)
MOGE2_SIGNATURE = Signature(
    "a MoGe-2 checkpoint ({'model_config', 'model'} with 'encoder.backbone.*' weights)",
    keys=("model_config", "model"),
    inner="model",
    inner_prefixes=("encoder.backbone.",),
)
PI3_SIGNATURE = Signature(
    "Pi3's state dict ('encoder.register_tokens', 'decoder.*', ...)",
    keys=("encoder.register_tokens",),
    prefixes=("decoder.",),
)
PPVD_SIGNATURE = Signature("a PPVD state dict ('dit_video.*')", prefixes=("dit_video.",))

PPD_DIT = ReleasedFile(
    "ppd.pth",
    "the PPD DiT, Depth Anything V2 semantics",
    DIT_SIGNATURE,
    _hub_url("gangweix/Pixel-Perfect-Depth", "ppd.pth"),
    "gangweix/Pixel-Perfect-Depth",
    "ppd.pth",
)
PPD_MOGE2_DIT = ReleasedFile(
    "ppd_moge.pth",
    "the PPD DiT, MoGe-2 semantics",
    DIT_SIGNATURE,
    "https://drive.google.com/file/d/1tabmcsbRVDKDfmO4KU1vOjurzN-wp0HV/view",
)
PPVD_DIT = ReleasedFile(
    "ppvd.pth",
    "the PPVD video DiT",
    PPVD_SIGNATURE,
    "https://drive.google.com/file/d/1IbMxrljpqkw92Z0G3CVEIrf-JffbI8sN/view",
)
DA2_VITL = ReleasedFile(
    "depth_anything_v2_vitl.pth",
    "Depth Anything V2 ViT-L",
    DA2_SIGNATURE,
    _hub_url("depth-anything/Depth-Anything-V2-Large", "depth_anything_v2_vitl.pth"),
    "depth-anything/Depth-Anything-V2-Large",
    "depth_anything_v2_vitl.pth",
)
MOGE2_VITL = ReleasedFile(
    "moge2.pt",
    "MoGe-2 ViT-L with normals",
    MOGE2_SIGNATURE,
    _hub_url("Ruicheng/moge-2-vitl-normal", "model.pt"),
    "Ruicheng/moge-2-vitl-normal",
    "model.pt",
)
PI3 = ReleasedFile(
    "pi3.safetensors",
    "Pi3",
    PI3_SIGNATURE,
    _hub_url("yyfz233/Pi3", "model.safetensors"),
    "yyfz233/Pi3",
    "model.safetensors",
)
_ALL_FILES = (PPD_DIT, PPD_MOGE2_DIT, PPVD_DIT, DA2_VITL, MOGE2_VITL, PI3)

RELEASED: Mapping[str, ReleasedModel] = MappingProxyType({
    m.name: m
    for m in (
        ReleasedModel("ppd", "image", "Pixel-Perfect Depth, Depth Anything V2 semantics", PPD_DIT, DA2_VITL),
        ReleasedModel(
            "ppd-moge2", "image", "Pixel-Perfect Depth, MoGe-2 semantics", PPD_MOGE2_DIT, MOGE2_VITL, MOGE2_VITL
        ),
        ReleasedModel("ppvd", "video", "Pixel-Perfect Video Depth, Pi3 semantics", PPVD_DIT, PI3),
        ReleasedModel("moge2", "geometry", "MoGe-2 (metric geometry for point clouds)", geometry=MOGE2_VITL),
    )
})  # fmt: skip


def is_released_name(value: object) -> bool:
    return isinstance(value, str) and value in RELEASED


def released_model(name: str) -> ReleasedModel:
    if not is_released_name(name):
        raise UnknownModelError(
            f"unknown model {name!r}: expected one of {', '.join(RELEASED)}, or the files' paths"
        )
    return RELEASED[name]


# --- where files are looked for ----------------------------------------------------------------------


def default_weights_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.path.expandvars(os.path.expanduser(cache))) / "ppd-lightning"


def weights_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """The weights folders, in lookup order: ``weights_dir``, ``$PPD_WEIGHTS_DIR``, the default folder.
    A folder the user named (argument or variable) that does not exist is an error."""
    dirs = []
    for given, label in (
        (weights_dir, "weights dir"),
        (os.environ.get(WEIGHTS_DIR_ENV) or None, WEIGHTS_DIR_ENV),
    ):
        if given is None:
            continue
        path = Path(os.path.expandvars(os.path.expanduser(os.fspath(given))))
        if not path.is_dir():
            raise MissingFileError(f"{label} {path}: no such folder")
        dirs.append(path)
    dirs.append(default_weights_dir())
    unique: list[Path] = []
    for d in dirs:
        if all(d.resolve() != u.resolve() for u in unique):
            unique.append(d)
    return unique


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder from the environment as it is now (the library reads it once, at
    import): ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
        )
        cache = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in ("1", "ON", "YES", "TRUE") or bool(
        getattr(constants, "HF_HUB_OFFLINE", False)
    )


def _endpoint() -> str | None:
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return endpoint or None


# --- resolution ------------------------------------------------------------------------------------------


def released(name: str, weights_dir: str | os.PathLike | None = None) -> ModelFiles:
    """The local paths of a released model's files (see the module's table), each found or downloaded and
    checked. Files that must be put in place by hand are looked for first, so that a missing one is
    reported before any download starts."""
    model = released_model(name)
    files = model.files()
    order = sorted(files, key=lambda role: files[role].on_hub)
    paths: dict[ReleasedFile, Path] = {}
    for role in order:
        if files[role] not in paths:
            paths[files[role]] = resolve_file(files[role], weights_dir, model=name)
    return ModelFiles(**{role: paths[f] for role, f in files.items()}, name=model.name, kind=model.kind)


def resolve_file(
    file: ReleasedFile, weights_dir: str | os.PathLike | None = None, *, model: str | None = None
) -> Path:
    """One released file: from a weights folder, else (a Hub file) through ``hf_hub_download``; checked."""
    dirs = weights_dirs(weights_dir)
    for folder in dirs:
        path = folder / file.filename
        if path.is_file():
            check_released_file(path, file, fix=f"replace it with {file.download_url}")
            return path
    needs = f"{model} needs {file.describe()}" if model else file.describe()
    if not file.on_hub:
        raise WeightsNotFoundError(
            f"{needs}, not found in {_listed(dirs)}: download it from "
            f"{file.download_url} (linked from {RELEASE_README}) and put it in {dirs[0]} as {file.filename} "
            f"(or point --weights-dir or {WEIGHTS_DIR_ENV} at the folder that holds it)"
        )
    path = _download(file, needs, dirs[0])
    blob = Path(os.path.realpath(path))
    check_released_file(
        path, file, fix=f"delete {blob} (the cached download) and run again to download it afresh"
    )
    return path


def _listed(dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


def _download(file: ReleasedFile, needs: str, target: Path) -> Path:
    """``hf_hub_download`` with the environment read now; its errors as one line naming repo and file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    assert file.repo_id is not None and file.hub_filename is not None
    offline, endpoint, cache = _offline(), _endpoint(), hub_cache_dir()
    where = endpoint or "https://huggingface.co"
    mirror = ", the server HF_ENDPOINT names" if endpoint else ""
    by_hand = f"download {file.download_url} yourself and put it in {target} as {file.filename}"
    try:
        return Path(
            hf_hub_download(
                file.repo_id,
                file.hub_filename,
                revision=file.revision,
                cache_dir=cache,
                local_files_only=offline,
                endpoint=endpoint,
            )
        )
    except LocalEntryNotFoundError as e:  # not cached, and offline or the server unreachable
        if offline:
            raise WeightsNotFoundError(
                f"{needs}: not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set: run once online "
                f"(without HF_HUB_OFFLINE) to download it, or {by_hand}"
            ) from e
        raise WeightsNotFoundError(
            f"{needs}: could not reach {where} ({_reason(e)}) and it is not in the Hugging Face cache {cache}: "
            f"check the connection (proxy, HF_ENDPOINT) and run again, or {by_hand}"
        ) from e
    except GatedRepoError as e:
        raise WeightsNotFoundError(
            f"{needs}: {file.repo_id} on {where} is gated (HTTP {_status(e)}): accept its terms on its Hub page "
            f"and log in (`hf auth login` or HF_TOKEN), or {by_hand}"
        ) from e
    except RepositoryNotFoundError as e:
        raise WeightsNotFoundError(
            f"{needs}: repository {file.repo_id} not found at {where} (HTTP {_status(e)}{mirror}): {by_hand}"
        ) from e
    except (RevisionNotFoundError, EntryNotFoundError) as e:
        raise WeightsNotFoundError(
            f"{needs}: {file.repo_id} has no '{file.hub_filename}' at revision {file.revision} on {where} "
            f"(HTTP {_status(e)}{mirror}): {by_hand}"
        ) from e
    except HfHubHTTPError as e:
        raise WeightsNotFoundError(
            f"{needs}: downloading from {where} failed (HTTP {_status(e)}): run again later, or {by_hand}"
        ) from e
    except Exception as e:
        # The HTTP client's own errors (the connection dropped for good mid-download; httpx or requests,
        # whichever this huggingface_hub uses) and its OSErrors (a size mismatch, an unwritable cache). A
        # full disk stays the disk-full error the commands report; anything else is a bug and propagates.
        transport = type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
        if isinstance(e, OSError) and e.errno in _DISK_FULL or not (transport or isinstance(e, OSError)):
            raise
        if isinstance(e, OSError) and e.errno is not None:
            raise WeightsNotFoundError(
                f"{needs}: cannot use the Hugging Face cache {cache} ({_reason(e)}): set HF_HOME to a "
                f"writable folder, or {by_hand}"
            ) from e
        raise WeightsNotFoundError(
            f"{needs}: the download from {where} failed ({_reason(e)}): run again, or {by_hand}"
        ) from e


def _status(e: Exception) -> str:
    response = getattr(e, "response", None)
    return str(getattr(response, "status_code", "?"))


def _reason(e: BaseException) -> str:
    """The innermost cause's first line, short: what actually went wrong on the wire."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:200].rstrip(": ")


# --- content checks -----------------------------------------------------------------------------------


_HTML_STARTS = (b"<!doctype html", b"<html", b"<!--", b"<head", b"<?xml")


def _content(path: Path, fix: str) -> object:
    """What the file holds, cheaply: a safetensors header's keys, or a memory-mapped ``weights_only`` load
    (no tensor data read). A failure is one CheckpointError naming the file."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith(_HTML_STARTS):
        raise CheckpointError(
            f"{path}: a web page ({path.stat().st_size} bytes), not a weights file: a download saved an HTML "
            f"page (an error page, or Google Drive's download-confirmation page) in its place; {fix}"
        )
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as st:
                return dict.fromkeys(st.keys())
        except Exception as e:  # noqa: BLE001 - any reader failure is one error naming the file
            raise CheckpointError(
                f"{path}: cannot read the safetensors header ({path.stat().st_size} bytes): truncated or not a "
                f"safetensors file ({_reason(e)}); {fix}"
            ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the project's reader gives the one error (and reads what mmap cannot)
        pass
    try:
        return load_torch_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {fix}") from e


def check_released_file(path: str | os.PathLike, file: ReleasedFile, fix: str = "") -> None:
    """The file opens with the project's reader and has ``file``'s content signature, or one CheckpointError
    naming it, what it looks like instead (another released file, when it is one) and ``fix``."""
    path = Path(path)
    fix = fix or f"replace it with {file.download_url}"
    obj = _content(path, fix)
    if file.signature.matches(obj):
        return
    if isinstance(obj, Mapping):
        others = [
            f.filename for f in _ALL_FILES if f.signature != file.signature and f.signature.matches(obj)
        ]
        found = (
            f"it looks like {' or '.join(others)}"
            if others
            else f"it holds {preview([str(k) for k in obj], 5)}"
        )
    else:
        found = f"it holds a {type(obj).__name__}"
    raise CheckpointError(
        f"{path}: not {file.describe()}: expected {file.signature.what}, but {found}; {fix}"
    )


# --- names and paths together ---------------------------------------------------------------------------


def resolve_model_files(
    dit: str | os.PathLike | None = None,
    semantics: str | os.PathLike | None = None,
    geometry: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> ModelFiles:
    """Files given by released name, by path, or both, e.g. ``resolve_model_files(model="ppd")``,
    ``resolve_model_files("ppd")``, ``resolve_model_files("ppd.pth", "depth_anything_v2_vitl.pth")``,
    ``resolve_model_files(model="ppd", geometry="moge2")``.

    - ``model``: a released name; its files fill every role not given explicitly.
    - ``dit``, ``semantics``, ``geometry``: each a path or a released name. A name stands for that model's
      file of this role (``geometry="moge2"``, ``semantics="ppd-moge2"``); a name as ``dit`` with no
      ``model`` also names the model (so ``resolve_model_files("ppd")`` is ``released("ppd")``).
      A released name is always taken as a name: write ``./ppd`` for a file called ``ppd``.

    Paths are returned as given (``~`` expanded) and must exist; the loaders read their format by content.
    Only the released files a role needs are resolved (downloaded, checked)."""
    given = {"dit": dit, "semantics": semantics, "geometry": geometry}
    if model is None and is_released_name(dit):
        model, given["dit"] = str(dit), None
    spec = released_model(model) if model is not None else None
    wanted: dict[str, ReleasedFile | Path] = {}
    for role, value in given.items():
        if value is None:
            if spec is not None and getattr(spec, role) is not None:
                wanted[role] = getattr(spec, role)
        elif is_released_name(value):
            named = getattr(RELEASED[str(value)], role)
            if named is None:
                having = [n for n, m in RELEASED.items() if getattr(m, role) is not None]
                raise UnknownModelError(
                    f"{role}={value!r}: the released model {value!r} has no {role} file (models with one: "
                    f"{', '.join(having)})"
                )
            wanted[role] = named
        else:
            wanted[role] = _existing_path(role, value)
    order = sorted(wanted, key=lambda role: not isinstance(wanted[role], Path) and wanted[role].on_hub)
    paths: dict[str, Path] = {}
    done: dict[ReleasedFile, Path] = {}
    for role in order:
        w = wanted[role]
        if isinstance(w, Path):
            paths[role] = w
        else:
            if w not in done:
                done[w] = resolve_file(w, weights_dir, model=model)
            paths[role] = done[w]
    return ModelFiles(**paths, name=spec.name if spec else None, kind=spec.kind if spec else None)


def _existing_path(role: str, value: str | os.PathLike) -> Path:
    path = Path(os.path.expanduser(os.fspath(value)))
    if path.is_file():
        return path
    text = os.fspath(value)
    bare = isinstance(text, str) and os.sep not in text and "/" not in text and not Path(text).suffix
    hint = f"; released models: {', '.join(RELEASED)}" if bare else ""
    raise MissingFileError(f"{role} file {path}: no such file{hint}")
