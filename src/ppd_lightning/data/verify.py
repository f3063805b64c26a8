"""Checking written depth shards: decode every sample of every shard and report counts, undecodable
members, samples that would train nothing or garbage, and depth ranges (``make_shards verify``)."""

from __future__ import annotations

import math
from typing import Any

from .codec import SampleError, decode_sample
from .shards import ShardError, expand_shard_urls, iter_tar_samples

__all__ = ["MAX_PLAUSIBLE_DEPTH", "verify_shards"]

# valid depth beyond this (metres) is flagged: no real or rendered scene needs more; sky is marked apart
MAX_PLAUSIBLE_DEPTH = 1000.0


def verify_shards(
    urls: str | list[str], progress: bool = True, max_depth: float = MAX_PLAUSIBLE_DEPTH
) -> dict[str, Any]:
    """Decode every sample of every shard; return counts, bad members, flagged samples and depth ranges.

    ``flagged`` lists decodable samples that would train nothing or train on garbage: no valid depth
    pixel at all, or valid depth beyond ``max_depth`` metres (an unmarked sky/background sentinel or
    a wrong unit, e.g. 1e30 m). Flagged samples are counted in ``samples``.
    """
    from tqdm import tqdm
    from webdataset import gopen

    shards = expand_shard_urls(urls)
    report: dict[str, Any] = {
        "shards": len(shards),
        "samples": 0,
        "bad": [],
        "flagged": [],
        "per_shard": {},
        "datasets": {},
        "max_depth": max_depth,
    }
    dmin, dmax, sky_px, all_px = math.inf, 0.0, 0, 0
    for url in tqdm(shards, unit="shard", desc="verify", disable=not progress):
        info = {"samples": 0, "bad": 0, "flagged": 0}
        try:
            with gopen(url, "rb") as stream:
                for members in iter_tar_samples(stream, url):
                    try:
                        s = decode_sample(members)
                    except SampleError as exc:
                        info["bad"] += 1
                        report["bad"].append(f"{url}: {exc}")
                        continue
                    info["samples"] += 1
                    name = str(s.meta["dataset"])
                    report["datasets"][name] = report["datasets"].get(name, 0) + 1
                    if s.mask.any():
                        v = s.depth[s.mask]
                        lo, hi = float(v.min()), float(v.max())
                        dmin, dmax = min(dmin, lo), max(dmax, hi)
                        if hi > max_depth:
                            n_far = int((v > max_depth).sum())
                            report["flagged"].append(
                                f"{url}: {s.key}: {n_far} valid pixels deeper than {max_depth:g} m (up to "
                                f"{hi:.3g} m): unmarked sky/background or a wrong depth unit?"
                            )
                            info["flagged"] += 1
                    else:
                        report["flagged"].append(f"{url}: {s.key}: no valid depth pixel")
                        info["flagged"] += 1
                    sky_px += int(s.sky.sum())
                    all_px += s.sky.size
        except (ShardError, OSError) as exc:
            info["bad"] += 1
            report["bad"].append(f"{url}: {exc}")
        report["per_shard"][url] = info
        report["samples"] += info["samples"]
    report["depth_min"] = None if dmin == math.inf else dmin
    report["depth_max"] = dmax if report["samples"] else None
    report["sky_fraction"] = sky_px / all_px if all_px else 0.0
    return report
