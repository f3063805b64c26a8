"""The expectation: Video Depth Anything's benchmark/eval/eval.py, metric.py and eval_tae.py, step by
step as that code runs them (numpy float64 / torch, frames stacked per sequence), written for the
tests independently of the package. The settings are passed in literally by each test."""

import json
import os

import cv2
import numpy as np
import torch


# -- eval.py -----------------------------------------------------------------------------------------
def get_infer(path, target_size, hard_crop=None):
    infer = np.load(path).astype(np.float32) / 1.0
    if hard_crop is not None:
        a, b, c, d = hard_crop
        infer = infer[a:b, c:d]
    if infer.shape[0] != target_size[0] or infer.shape[1] != target_size[1]:
        infer = cv2.resize(infer, (target_size[1], target_size[0]))
    return infer


def get_gt(path, factor, zero_to=-1):
    gt = np.load(path) if path.endswith(".npy") else np.array(cv2.imread(path, -1))
    gt = gt / factor
    gt[gt == 0] = zero_to
    return gt


def abs_relative_difference(output, target, valid_mask):
    d = torch.abs(output - target) / target
    d[~valid_mask] = 0
    n = valid_mask.sum((-1, -2))
    return (torch.sum(d, (-1, -2)) / n).mean()


def rmse_linear(output, target, valid_mask):
    diff = output - target
    diff[~valid_mask] = 0
    n = valid_mask.sum((-1, -2))
    return torch.sqrt(torch.sum(diff**2, (-1, -2)) / n).mean()


def delta1_acc(output, target, valid_mask):
    m = torch.max(output / target, target / output)
    bit = torch.where(m.cpu() < 1.25, torch.ones(*output.shape), torch.zeros(*output.shape))
    bit[~valid_mask] = 0
    n = valid_mask.sum((-1, -2))
    return (torch.sum(bit, (-1, -2)) / n.cpu()).mean()


def depth2disparity(depth):
    disp = np.zeros_like(depth)
    m = depth > 0
    disp[m] = 1.0 / depth[m]
    return disp


def _align(infs, gts, max_depth):
    valid = np.logical_and(gts > 1e-3, gts < max_depth)
    gt_disp = 1.0 / (gts[valid].reshape((-1, 1)).astype(np.float64) + 1e-8)
    infs = np.clip(infs, a_min=1e-3, a_max=None)
    pred_disp = infs[valid].reshape((-1, 1)).astype(np.float64)
    A = np.concatenate([pred_disp, np.ones_like(pred_disp)], axis=-1)
    scale, shift = np.linalg.lstsq(A, gt_disp, rcond=None)[0]
    aligned = np.clip(scale * infs + shift, a_min=1e-3, a_max=None)
    return np.clip(depth2disparity(aligned), a_min=1e-3, a_max=max_depth), valid


def eval_depthcrafter(infer_paths, gt_paths, factors, crop, max_depth, seq_length):
    a, b, c, d = crop
    gts, infs = [], []
    for i in range(len(infer_paths)):
        if not os.path.exists(infer_paths[i]):
            continue
        gt = get_gt(gt_paths[i], factors[i])[a:b, c:d]
        gts.append(gt)
        infs.append(get_infer(infer_paths[i], gt.shape))
    gts, infs = np.stack(gts)[:seq_length], np.stack(infs)[:seq_length]
    pred, valid = _align(infs, gts, max_depth)
    keep = valid.sum((-1, -2)) > 0
    p, g, m = (torch.from_numpy(x)[torch.from_numpy(keep)] for x in (pred, gts, valid))
    return [f(p.clone(), g.clone(), m).item() for f in (abs_relative_difference, rmse_linear, delta1_acc)]


def vda_eval(root, json_name, dataset, infer_root, crop, max_depth, max_eval_len):
    """eval.py's main for one data set; predictions at <infer_root>/<image>.npy."""
    with open(os.path.join(root, json_name)) as fs:
        data = json.load(fs)[dataset]
    results = []
    for entry in data:
        for _key, frames in entry.items():
            infer = [
                os.path.join(infer_root, f["image"]).replace(".jpg", ".npy").replace(".png", ".npy")
                for f in frames
            ]
            gt = [os.path.join(root, f["gt_depth"]) for f in frames]
            fac = [f["factor"] for f in frames]
            results.append(
                eval_depthcrafter(
                    infer[:max_eval_len], gt[:max_eval_len], fac[:max_eval_len], crop, max_depth, max_eval_len
                )
            )
    mean = np.mean(np.array(results), axis=0)
    return {"abs_rel": mean[0], "rmse": mean[1], "delta1": mean[2], "n_sequences": len(results)}


# -- eval_tae.py -------------------------------------------------------------------------------------
def tae_one_way(depth1, depth2, R, T, K):
    H, W = depth1.shape
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    xx, yy = np.meshgrid(np.arange(W), np.arange(H))
    X = (xx - cx) * depth1 / fx
    Y = (yy - cy) * depth1 / fy
    Z = depth1
    pts = np.stack((X.flatten(), Y.flatten(), Z.flatten()), axis=1)
    moved = pts @ R.T + T
    with np.errstate(divide="ignore", invalid="ignore"):
        xp = np.round((moved[:, 0] * fx) / moved[:, 2] + cx)
        yp = np.round((moved[:, 1] * fy) / moved[:, 2] + cy)
    valid = (xp >= 0) & (xp < W) & (yp >= 0) & (yp < H)
    if valid.sum() == 0:
        return 0
    proj = np.zeros((H, W))
    proj[yp[valid].astype(int), xp[valid].astype(int)] = moved[valid, 2]  # numpy: the last one stays
    m = (proj > 0) & (depth2 > 0)
    if m.sum() == 0:
        return 0
    return np.mean(np.abs(depth2[m] - proj[m]) / depth2[m])


def eval_tae_sequence(infer_paths, gt_paths, factors, Ks, poses, crop, max_depth):
    a, b, c, d = crop
    gts, infs, ks, ps = [], [], [], []
    for i in range(len(infer_paths)):
        if not os.path.exists(infer_paths[i]):
            continue
        gt = get_gt(gt_paths[i], factors[i], zero_to=0)[a:b, c:d]
        gts.append(gt)
        infs.append(get_infer(infer_paths[i], gt.shape, hard_crop=crop))
        ks.append(Ks[i])
        ps.append(poses[i])
    pred, _ = _align(np.stack(infs), np.stack(gts), max_depth)
    total = 0.0
    for i in range(len(gts) - 1):
        T_2_1 = np.linalg.inv(ps[i + 1]) @ ps[i]
        total += tae_one_way(pred[i], pred[i + 1], T_2_1[:3, :3], T_2_1[:3, 3], ks[i])
        T_1_2 = np.linalg.inv(T_2_1)
        total += tae_one_way(pred[i + 1], pred[i], T_1_2[:3, :3], T_1_2[:3, 3], ks[i])
    return total / (2 * (len(gts) - 1)) * 100


def vda_tae(root, json_name, dataset, infer_root, crop, max_depth, start, end, scenes):
    with open(os.path.join(root, json_name)) as fs:
        data = json.load(fs)[dataset]
    total, count = 0.0, 0
    for entry in data[:scenes]:
        for _, frames in entry.items():
            infer = [
                os.path.join(infer_root, f["image"]).replace(".jpg", ".npy").replace(".png", ".npy")
                for f in frames
            ]
            gt = [os.path.join(root, f["gt_depth"]) for f in frames]
            fac = [f["factor"] for f in frames]
            ks = [np.array(f["K"]) for f in frames]
            ps = [np.array(f["pose"]) for f in frames]
        sl = slice(start, end)
        total += eval_tae_sequence(infer[sl], gt[sl], fac[sl], ks[sl], ps[sl], crop, max_depth)
        count += 1
    return {"tae": total / count, "n_sequences": count}
