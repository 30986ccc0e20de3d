"""SATORI staged verifiable rewards (format + union box IoU + answer), summed and trained with GRPO.

Paper: Chuming Shen, Wei Wei, Xiaoye Qu, Yu Cheng (2025), "SATORI-R1: Incentivizing Multimodal Reasoning with
Spatial Grounding and Verifiable Rewards" (arXiv 2505.19094; the authors are from memory, the seeds file holds only
the title and abstract). Official code: justairr/SATORI-R1, ``plugin.py``. SATORI splits visual question answering
into verifiable stages, each with its own reward, and sums them as the GRPO reward (their Sec. 3, reward
"r = r_format + r_caption + r_bbox + r_answer"):

    r_format = 1[output is <caption>..</caption><bbox>[[..]]</bbox><answer>..</answer>]
    r_bbox   = area(U_pred n U_true) / area(U_pred u U_true)      (U = the union of a set of boxes)
    r_answer = 1[answer in accepted answers]

and GRPO's group-relative advantage ``A_i = (r_i - mean_G r) / std_G r`` (Shao et al. 2024). The claim: verifiable
intermediate stages lower the policy-gradient variance and keep the model's attention on the task-relevant region.

Checked against ``plugin.py`` (read 2026-12-03): ``BoundingBoxAccuracy.union_iou`` takes shapely unions of the
predicted and true boxes and returns ``intersection / (union + 1e-6)``; an unparsable box list scores 0; the format,
caption (BLEU-4 + ROUGE-L)/2, bbox and answer rewards are four separate reward functions that ms-swift adds with
unit weights. On a pixel grid with integer corners the union areas are exact by rasterising (:func:`union_iou`), so
no polygon library is needed; the ``1e-6`` is kept.

Demo (:func:`demo`): 16x16 images with 3 non-overlapping rectangles of 3 distinct colours (of 4) and a marker pixel
inside one of them; the question is "what colour is the marked rectangle?". Rectangles lie on a grid of 4x4-pixel
cells (sides of 1-2 cells). The policy (softmax regression on the cell grid's one-hot colours, the marker cell and
the cells sharing the marker's colour) outputs four discretised box corners, one of 4 bins each (``x1 = 4 t``,
``x2 = 4 (t + 1)`` pixels, half-open), then an answer from a head that sees only the colour histogram of the pixels inside its own predicted box
(the hard-attention bottleneck; the head does not see the marker, so a whole-image box gives the wrong answer
unless the marked rectangle is the largest). Two arms from the same initial weights: answer-only reward (the R1-like
baseline) and the staged reward ``format + IoU + answer``. Numbers: updates until the greedy answer accuracy on a
held-out set first reaches 90 %, the final mean IoU of the greedy box with the marked rectangle, and the relative
policy-gradient variance at the shared initial policy (``E||g - E g||^2 / ||E g||^2`` over independent batches).

Choices where the paper is silent or that the toy forces:

* No caption stage (the image has no text to caption): the staged reward is format + IoU + answer, unit weights as
  in ms-swift's default. "Format" is a well-formed box (``x1 < x2`` and ``y1 < y2``); a malformed box gets IoU 0
  and its answer head sees an empty crop, so its answer is scored wrong.
* No KL term (SATORI uses ``beta = 1e-3``; with a from-scratch policy there is no reference model to stay near).
  One policy-gradient step per batch (no ratio clipping needed on-policy).
* Group size ``G = 8`` (SATORI uses 16) and 32 images per update, Adam, learning rate 3e-3: sized for 2 CPU cores.
* The policy's log-probability of an output is the sum over the four corner tokens and the answer token.
* The toy was made easier step by step on seed 0 because GRPO did not localise: with 16 pixel bins per corner and
  an MLP on the raw one-hot image, both arms collapsed within 20 updates (Adam 3e-3) to one constant box; at 4 bins
  with an MLP (64-256 hidden, Adam 3e-4 to 3e-3, G = 4-16, up to 256 images per update, or an entropy bonus 0.02,
  or SGD) the boxes still collapsed to near-constant ones (IoU ~0.33-0.41); a linear box head with Adam 1e-2 (kept)
  learned input-dependent boxes (staged IoU ~0.6 at 300-400 updates on seed 0). Neither arm reaches 90 % accuracy
  in the 300-update budget, so updates to 75 % are also reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from safetybed.control.algorithms.common import build_module
from safetybed.suite.common.seq_task import group_advantages
from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["Config", "ENTRY", "demo", "grpo_staged_loss", "staged_rewards", "union_iou"]

IMAGE_SIZE = 16  # [pixels] per side
N_COLOURS = 4  # palette size; 3 rectangles per image take 3 distinct colours
N_RECTANGLES = 3
CELL_PX = 4  # [pixels] per side of a coordinate bin: rectangles and predicted corners lie on this grid
N_BINS = IMAGE_SIZE // CELL_PX  # corner tokens per coordinate


def union_iou(pred_boxes: torch.Tensor, true_boxes: torch.Tensor, *, size: int = IMAGE_SIZE,
              eps: float = 1e-6) -> torch.Tensor:
    """IoU of the union of predicted boxes with the union of true boxes (SATORI ``plugin.py``,
    ``BoundingBoxAccuracy.union_iou``), exact on a ``size x size`` pixel grid.

    Boxes are ``[..., K, 4]`` integer corners ``(x1, y1, x2, y2)`` covering the half-open pixel ranges
    ``x1 <= x < x2``, ``y1 <= y < y2`` (so a box's raster area is ``(x2 - x1)(y2 - y1)``, its continuous area);
    a box with ``x2 <= x1`` or ``y2 <= y1`` covers nothing. Returns ``[...]`` values
    ``|U_pred n U_true| / (|U_pred u U_true| + eps)`` as in the official code."""
    if pred_boxes.shape[-1] != 4 or true_boxes.shape[-1] != 4:
        raise ValueError(f"boxes: expected [..., K, 4] corners, got {tuple(pred_boxes.shape)} and "
                         f"{tuple(true_boxes.shape)}")
    pred_mask, true_mask = box_masks(pred_boxes, size=size).any(dim=-3), box_masks(true_boxes, size=size).any(dim=-3)
    intersection = (pred_mask & true_mask).sum(dim=(-2, -1)).to(torch.float64)
    union = (pred_mask | true_mask).sum(dim=(-2, -1)).to(torch.float64)
    return intersection / (union + eps)


def box_masks(boxes: torch.Tensor, *, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Boolean pixel masks ``[..., size, size]`` (rows y, columns x) of boxes ``[..., 4]`` (half-open ranges)."""
    coordinate = torch.arange(size)
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))
    in_x = (coordinate >= x1) & (coordinate < x2)  # [..., size]
    in_y = (coordinate >= y1) & (coordinate < y2)
    return in_y[..., :, None] & in_x[..., None, :]


def staged_rewards(*, well_formed: torch.Tensor, iou: torch.Tensor, correct: torch.Tensor,
                   staged: bool = True) -> dict[str, torch.Tensor]:
    """SATORI's stage rewards and their sum (Shen et al. 2025, Sec. 3; ``plugin.py`` ``Format``,
    ``BoundingBoxAccuracy``, ``VQAAccuracy``, added with unit weights). ``staged=False`` gives the R1-like
    answer-only reward. Returns ``{"format", "bbox", "answer", "total"}``."""
    terms = {"format": well_formed.to(torch.float64), "bbox": iou.to(torch.float64) * well_formed,
             "answer": correct.to(torch.float64)}
    terms["total"] = terms["format"] + terms["bbox"] + terms["answer"] if staged else terms["answer"]
    return terms


def grpo_staged_loss(log_probs: torch.Tensor, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """GRPO's policy-gradient loss on a group of outputs per prompt: ``-mean_i A_i log pi(o_i)`` with
    ``A_i = (r_i - mean_G r) / (std_G r + eps)`` (Shao et al. 2024 Eq. 3, outcome supervision, one on-policy step so
    the clipped ratio is 1). ``log_probs`` and ``rewards`` are ``[prompts, G]``; returns ``{"loss_actor",
    "advantages"}``."""
    if log_probs.shape != rewards.shape or log_probs.dim() != 2:
        raise ValueError(f"log_probs and rewards: expected equal [prompts, G] shapes, got {tuple(log_probs.shape)} "
                         f"and {tuple(rewards.shape)}")
    advantages = group_advantages(rewards.to(log_probs.dtype))
    return {"loss_actor": -(advantages.detach() * log_probs).mean(), "advantages": advantages.detach()}


@dataclass(frozen=True)
class Config:
    """Demo sizes and GRPO hyper-parameters."""

    updates: int = 300
    """GRPO updates per arm (sized for about a minute per seed on 2 shared CPU cores)."""
    images_per_update: int = 32
    """Prompts per update (SATORI trains on batches of VQA-Verify items; sized for CPU)."""
    group_size: int = 8
    """Rollouts per prompt G (SATORI uses 16; halved for CPU)."""
    learning_rate: float = 1e-2
    """Adam step size (tried 3e-3, 1e-2, 3e-2 on seed 0; SATORI's 1e-6 is for a pretrained 3B model)."""
    hidden: int = 0
    """Hidden width of the box network; 0 is a linear (softmax-regression) box head. An MLP (64-256 hidden, Adam
    3e-4 to 3e-3) collapsed to near-constant boxes (entropy ~0.05, IoU ~0.33) under both rewards on seed 0."""
    eval_every: int = 10
    """Updates between greedy evaluations on the held-out images."""
    eval_images: int = 256
    """Held-out images for answer accuracy and mean IoU."""
    train_images: int = 4096
    """Size of the training image pool the batches are drawn from."""
    variance_batches: int = 16
    """Independent batches at the initial policy for the gradient-variance estimate."""
    accuracy_target: float = 0.9
    """The answer accuracy whose first crossing counts the updates (suite.md 1.16(c))."""
    accuracy_secondary: float = 0.75
    """A lower accuracy whose first crossing is also reported (for when 90 % is not reached in the budget)."""
    n_seeds: int = 3
    """Seeds (seed, seed + 1, ...)."""

    def __post_init__(self) -> None:
        for name in ("updates", "images_per_update", "eval_every", "eval_images", "train_images",
                     "n_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size: expected >= 2 (GRPO needs a group), got {self.group_size}")
        if self.variance_batches < 2:
            raise ValueError(f"variance_batches: expected >= 2, got {self.variance_batches}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, got {self.learning_rate}")
        for name in ("accuracy_target", "accuracy_secondary"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name}: expected in (0, 1], got {getattr(self, name)}")
        if self.hidden < 0:
            raise ValueError(f"hidden: expected >= 0 (0 = linear box head), got {self.hidden}")


@dataclass(frozen=True)
class Images:
    """A batch of synthetic images: ``pixels [N, H, W]`` (0 background, 1..N_COLOURS colours), the marker's
    flat index ``[N]``, the marked rectangle's box ``[N, 4]`` and colour (0-based) ``[N]``."""

    pixels: torch.Tensor
    marker: torch.Tensor
    box: torch.Tensor
    colour: torch.Tensor

    def select(self, index: torch.Tensor) -> Images:
        return Images(self.pixels[index], self.marker[index], self.box[index], self.colour[index])

    def features(self) -> torch.Tensor:
        """Policy input on the ``N_BINS x N_BINS`` cell grid (rectangles are grid aligned, so nothing is lost):
        one-hot cell colours (background + colours), the one-hot marker cell and the cells sharing the marker's
        colour (the question's referent, which a VLM would read from the text), flattened, and the referent's
        occupied column and row bins."""
        cells = self.pixels[:, ::CELL_PX, ::CELL_PX].flatten(1)  # [N, N_BINS^2]
        marker_cell = (self.marker // IMAGE_SIZE // CELL_PX) * N_BINS + (self.marker % IMAGE_SIZE) // CELL_PX
        one_hot = torch.nn.functional.one_hot(cells, N_COLOURS + 1).to(torch.float32)
        marker = torch.nn.functional.one_hot(marker_cell, N_BINS * N_BINS).to(torch.float32)
        referent = (cells == cells.gather(1, marker_cell[:, None])).to(torch.float32)
        grid = referent.view(-1, N_BINS, N_BINS)  # [N, rows, columns]
        columns, rows = grid.amax(dim=1), grid.amax(dim=2)  # the referent's occupied column / row bins
        return torch.cat([one_hot.flatten(1), marker, referent, columns, rows], dim=1)


def make_images(n: int, rng: np.random.Generator) -> Images:
    """``n`` images of 3 non-overlapping grid-aligned rectangles (sides 1..2 bins of ``CELL_PX`` pixels, 3 distinct
    colours), one marked."""
    pixels = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.int64)
    marker, boxes, colours = np.zeros(n, np.int64), np.zeros((n, 4), np.int64), np.zeros(n, np.int64)
    for i in range(n):
        placed: list[tuple[int, int, int, int]] = []
        while len(placed) < N_RECTANGLES:
            w, h = rng.integers(1, 3, size=2)
            x1, y1 = rng.integers(0, N_BINS - w + 1), rng.integers(0, N_BINS - h + 1)
            box = (int(x1) * CELL_PX, int(y1) * CELL_PX, int(x1 + w) * CELL_PX, int(y1 + h) * CELL_PX)
            if all(box[0] >= b[2] or b[0] >= box[2] or box[1] >= b[3] or b[1] >= box[3] for b in placed):
                placed.append(box)
        palette = rng.permutation(N_COLOURS)[:N_RECTANGLES] + 1
        for box, colour in zip(placed, palette, strict=True):
            pixels[i, box[1]:box[3], box[0]:box[2]] = colour
        target = int(rng.integers(N_RECTANGLES))
        x1, y1, x2, y2 = placed[target]
        marker[i] = int(rng.integers(y1, y2)) * IMAGE_SIZE + int(rng.integers(x1, x2))
        boxes[i], colours[i] = placed[target], palette[target] - 1
    return Images(torch.from_numpy(pixels), torch.from_numpy(marker), torch.from_numpy(boxes),
                  torch.from_numpy(colours))


class BoxThenAnswerPolicy(nn.Module):
    """Outputs box corners (four categorical tokens) from the image, then an answer from a head that sees only the
    normalised colour histogram of the pixels inside the predicted box (hard attention)."""

    def __init__(self, *, hidden: int):
        super().__init__()
        inputs = N_BINS * N_BINS * (N_COLOURS + 3) + 2 * N_BINS
        self.box_net = (nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 4 * N_BINS)) if hidden
                        else nn.Linear(inputs, 4 * N_BINS))
        self.answer_head = nn.Linear(N_COLOURS + 1, N_COLOURS)

    def box_logits(self, images: Images) -> torch.Tensor:
        return self.box_net(images.features()).view(-1, 4, N_BINS)

    def answer_logits(self, images: Images, boxes: torch.Tensor) -> torch.Tensor:
        """Answer logits ``[N, C]`` from the in-box histogram of ``boxes [N, 4]``; an empty box sees zeros."""
        inside = box_masks(boxes)  # [N, H, W]
        one_hot = torch.nn.functional.one_hot(images.pixels, N_COLOURS + 1).to(torch.float32)
        counts = (one_hot * inside[..., None]).sum(dim=(1, 2))
        histogram = counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)
        return self.answer_head(histogram)

    def act(self, images: Images, *, generator: torch.Generator | None, greedy: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes ``[N, 4]`` in pixels (corner tokens ``t`` in ``0..N_BINS-1``: ``x1 = t CELL_PX``,
        ``x2 = (t + 1) CELL_PX``), answers ``[N]`` and their summed log-probabilities ``[N]`` (with a graph)."""
        box_dist = torch.distributions.Categorical(logits=self.box_logits(images))
        if greedy:
            tokens = box_dist.probs.argmax(dim=-1)
        else:
            tokens = torch.multinomial(box_dist.probs.view(-1, N_BINS), 1, generator=generator).view(-1, 4)
        boxes = (tokens + torch.tensor([0, 0, 1, 1])) * CELL_PX
        answer_dist = torch.distributions.Categorical(logits=self.answer_logits(images, boxes))
        if greedy:
            answers = answer_dist.probs.argmax(dim=-1)
        else:
            answers = torch.multinomial(answer_dist.probs, 1, generator=generator).squeeze(1)
        log_prob = box_dist.log_prob(tokens).sum(dim=1) + answer_dist.log_prob(answers)
        return boxes, answers, log_prob


def _rollout_rewards(policy: BoxThenAnswerPolicy, images: Images, *, group_size: int, staged: bool,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities and rewards ``[prompts, G]`` of ``group_size`` sampled outputs per image."""
    repeated = images.select(torch.arange(len(images.marker)).repeat_interleave(group_size))
    boxes, answers, log_prob = policy.act(repeated, generator=generator)
    well_formed = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    iou = union_iou(boxes[:, None], repeated.box[:, None])
    rewards = staged_rewards(well_formed=well_formed, iou=iou, correct=(answers == repeated.colour) & well_formed,
                             staged=staged)["total"]
    return log_prob.view(-1, group_size), rewards.view(-1, group_size)


def _evaluate(policy: BoxThenAnswerPolicy, images: Images) -> tuple[float, float]:
    """Greedy answer accuracy and mean IoU with the marked rectangle."""
    with torch.no_grad():
        boxes, answers, _ = policy.act(images, generator=None, greedy=True)
    well_formed = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    iou = union_iou(boxes[:, None], images.box[:, None]) * well_formed
    return float(((answers == images.colour) & well_formed).float().mean()), float(iou.mean())


def _gradient_variance(policy: BoxThenAnswerPolicy, pool: Images, config: Config, *, staged: bool,
                       generator: torch.Generator) -> float:
    """Relative variance ``mean_b ||g_b - g_mean||^2 / ||g_mean||^2`` of the GRPO gradient over independent
    batches at the current policy (scale free, so the answer-only and staged rewards compare)."""
    gradients = []
    for _ in range(config.variance_batches):
        index = torch.randint(len(pool.marker), (config.images_per_update,), generator=generator)
        log_probs, rewards = _rollout_rewards(policy, pool.select(index), group_size=config.group_size,
                                              staged=staged, generator=generator)
        policy.zero_grad()
        grpo_staged_loss(log_probs, rewards)["loss_actor"].backward()
        gradients.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    stacked = torch.stack(gradients)
    mean = stacked.mean(dim=0)
    return float(((stacked - mean) ** 2).sum(dim=1).mean() / mean.pow(2).sum().clamp_min(1e-30))


def _train(config: Config, *, staged: bool, seed: int, pool: Images, held_out: Images) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    policy = build_module(lambda: BoxThenAnswerPolicy(hidden=config.hidden), device=torch.device("cpu"),
                          generator=generator)  # same seed, same initial weights for both arms
    variance = _gradient_variance(policy, pool, config, staged=staged,
                                  generator=torch.Generator().manual_seed(seed + 10_000))
    optimiser = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    sample_generator = torch.Generator().manual_seed(seed + 20_000)
    updates_to_target = updates_to_secondary = float("nan")
    accuracy, iou = _evaluate(policy, held_out)
    for update in range(1, config.updates + 1):
        index = torch.randint(len(pool.marker), (config.images_per_update,), generator=sample_generator)
        log_probs, rewards = _rollout_rewards(policy, pool.select(index), group_size=config.group_size,
                                              staged=staged, generator=sample_generator)
        optimiser.zero_grad()
        grpo_staged_loss(log_probs, rewards)["loss_actor"].backward()
        optimiser.step()
        if update % config.eval_every == 0 or update == config.updates:
            accuracy, iou = _evaluate(policy, held_out)
            if np.isnan(updates_to_target) and accuracy >= config.accuracy_target:
                updates_to_target = float(update)
            if np.isnan(updates_to_secondary) and accuracy >= config.accuracy_secondary:
                updates_to_secondary = float(update)
    return {"updates_to_target": updates_to_target, "updates_to_secondary": updates_to_secondary, "final_accuracy": accuracy, "final_iou": iou,
            "gradient_relative_variance": variance}


def demo(*, fast: bool, seed: int) -> DemoResult:
    """Answer-only vs staged (format + IoU + answer) GRPO on the marked-rectangle colour task, over seeds."""
    config = Config(updates=120, n_seeds=2, eval_images=128, train_images=1024, variance_batches=8) if fast \
        else Config()
    seeds = tuple(range(seed, seed + config.n_seeds))
    runs: dict[str, list[dict[str, float]]] = {"staged": [], "answer_only": []}
    for run_seed in seeds:
        pool_seq, held_seq = np.random.SeedSequence(run_seed).spawn(2)
        pool = make_images(config.train_images, np.random.default_rng(pool_seq))
        held_out = make_images(config.eval_images, np.random.default_rng(held_seq))
        for arm in runs:
            runs[arm].append(_train(config, staged=arm == "staged", seed=run_seed, pool=pool, held_out=held_out))

    def per_seed(arm: str, key: str) -> list[float]:
        return [run[key] for run in runs[arm]]

    def reached(arm: str, key: str) -> list[float]:
        # A run that never reached the accuracy counts as needing the whole budget (a lower bound on its count).
        return [u if np.isfinite(u) else float(config.updates) for u in per_seed(arm, key)]

    speedup = [b / s for s, b in zip(reached("staged", "updates_to_target"),
                                     reached("answer_only", "updates_to_target"), strict=True)]
    speedup_secondary = [b / s for s, b in zip(reached("staged", "updates_to_secondary"),
                                               reached("answer_only", "updates_to_secondary"), strict=True)]
    variance_ratio = [s / b for s, b in zip(per_seed("staged", "gradient_relative_variance"),
                                            per_seed("answer_only", "gradient_relative_variance"), strict=True)]
    budget_unit = "updates (the budget if never reached)"

    def numbers(arm: str) -> dict:
        return {"updates_to_90pct_accuracy": measure(reached(arm, "updates_to_target"), unit=budget_unit),
                "updates_to_75pct_accuracy": measure(reached(arm, "updates_to_secondary"), unit=budget_unit),
                "reached_90pct": measure([float(np.isfinite(u)) for u in per_seed(arm, "updates_to_target")],
                                         unit="fraction of seeds"),
                "final_accuracy": measure(per_seed(arm, "final_accuracy"), unit="fraction"),
                "final_mean_iou": measure(per_seed(arm, "final_iou"), unit="IoU"),
                "gradient_relative_variance": measure(per_seed(arm, "gradient_relative_variance"),
                                                      unit="E||g - Eg||^2 / ||Eg||^2")}

    measured = numbers("staged") | {"speedup_vs_answer_only": measure(speedup, unit="ratio of updates"),
                                    "speedup_to_75pct_vs_answer_only": measure(speedup_secondary,
                                                                               unit="ratio of updates"),
                                    "variance_ratio_vs_answer_only": measure(variance_ratio, unit="ratio")}
    baseline = numbers("answer_only")
    staged_reached = all(np.isfinite(u) for u in per_seed("staged", "updates_to_target"))
    faster = staged_reached and float(np.mean(speedup)) >= 1.5
    localises = float(np.mean(per_seed("staged", "final_iou"))) > 0.7
    lower_variance = float(np.mean(variance_ratio)) < 1.0
    held = {"faster (>=1.5x)": faster, "mean IoU > 0.7": localises, "lower PG variance": lower_variance}
    verdict = "reproduced" if all(held.values()) else "partly" if any(held.values()) else "not reproduced"
    why = (f"staged reward: {np.mean(speedup):.2f}x fewer updates to {config.accuracy_target:.0%} accuracy "
           f"(staged reached it on {sum(np.isfinite(per_seed('staged', 'updates_to_target')))}/{len(seeds)} seeds, "
           f"answer-only on {sum(np.isfinite(per_seed('answer_only', 'updates_to_target')))}; "
           f"{np.mean(speedup_secondary):.2f}x to {config.accuracy_secondary:.0%}), mean IoU "
           f"{np.mean(per_seed('staged', 'final_iou')):.2f} vs {np.mean(per_seed('answer_only', 'final_iou')):.2f}, "
           f"relative PG variance ratio {np.mean(variance_ratio):.2f}; held: "
           + ", ".join(k for k, v in held.items() if v) + "; failed: "
           + (", ".join(k for k, v in held.items() if not v) or "none")
           + "; an MLP box head collapsed to constant boxes under both rewards, so the box head is linear")
    return DemoResult(
        name="satori-staged-rewards",
        claim="Staged verifiable rewards (format + union-box IoU + answer) reach 90 % answer accuracy in >= 1.5x "
              "fewer GRPO updates than the answer-only reward, with mean box IoU > 0.7 and lower policy-gradient "
              "variance.",
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings=asdict(config) | {"image_size_px": IMAGE_SIZE, "n_colours": N_COLOURS,
                                   "n_rectangles": N_RECTANGLES, "rectangle_side_px": [3, 7]})


ENTRY = SuiteEntry(
    name="satori-staged-rewards",
    title="SATORI-R1: Incentivizing Multimodal Reasoning with Spatial Grounding and Verifiable Rewards",
    citation="Shen et al. 2025",
    family="verifiable_rewards",
    module=__name__,
    rule=staged_rewards,
    demo=demo,
)
