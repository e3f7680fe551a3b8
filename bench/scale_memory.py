"""The second input scale for one of the two score terms only (issue 12, stop 29).

Stop 29's default scores every image at 256 and 192 px: SimpleNet and the memory bank's
nearest-neighbour distances at both scales, the two maps averaged. Two variants keep one
term at the full scale only:

- ``memory-full``: the memory term at the full scale only (its distances are most of the
  second scale's cost, a 4000-patch matrix product for each of the 576 extra patches): the
  coreset is chosen from the full scale's training patches, the score map is the two
  scales' merged SimpleNet map plus the full scale's memory map;
- ``simplenet-full``: SimpleNet at the full scale only: the heads train on the full scale's
  patches, the score map is the full scale's SimpleNet map plus the two scales' merged
  memory map (the bank chosen from both scales' patches, as the default).

The held-out calibration scales the memory term on the same maps. The patches apply to the
run only; then ``bench/quality.py``'s three checks run unchanged, with the same arguments:

    python bench/scale_memory.py {memory-full,simplenet-full} [bench/quality.py arguments]

Measured at stop 29, one run after another on one machine (``VARIANT --seed N``, N = 0, 1,
2), beside the default's ``bench/quality.py --seed N`` and ``--second-scale 0`` runs of the
same session (image AUROC / pixel AUROC / AUPRO / recall at 1% false alarms; means of the
three seeds; fit time):

    memory-full     development .979 / .968 / .765 / .768   synthetic .968 / .869 / .817 / .853
    simplenet-full  development .978 / .963 / .750 / .763   synthetic .970 / .882 / .823 / .857
    the default     development .978 / .964 / .736 / .765   synthetic .971 / .884 / .818 / .862
    one scale       development .978 / .966 / .776 / .750   synthetic .967 / .864 / .819 / .832

    fit: memory-full 144-149 s, simplenet-full 105-107 s, the default 146-147 s, one scale
    101-103 s

Per seed (development | synthetic): memory-full .973 / .967 / .752 / .760 | .965 / .870 /
.815 / .845; .981 / .969 / .775 / .735 | .969 / .866 / .821 / .835; .982 / .967 / .767 /
.810 | .970 / .870 / .814 / .880. simplenet-full .974 / .963 / .756 / .765 | .965 / .881 /
.824 / .855; .979 / .963 / .734 / .710 | .973 / .883 / .826 / .845; .981 / .964 / .760 /
.815 | .971 / .882 / .820 / .870.

The second scale's synthetic pixel AUROC gain is the memory term's at 192 px (memory-full
keeps +.005 of the default's +.020); SimpleNet at 192 px adds nothing beyond seed noise to
either check (simplenet-full is within .005 of the default in every mean but development
AUPRO, +.014), while its heads train on 1.56x the patches, 40 s of the fit.
Neither replaces the default: memory-full gives back the synthetic gain, simplenet-full is
the default within noise with a second code path for the two terms. Inference cost of
either was not timed. The heads of simplenet-full train on the full scale's patches, but the
noise's feature scale is measured over both scales' patches, as in the default. The
memory-full lines came from the first form of this script (that variant alone); the current
form (patching ``AnomalyDetector.score_terms``) reprinted its seed-0 lines to the last digit.
"""

from __future__ import annotations

import sys

import quality
import torch

import model.trainer as trainer_module
from model.detector import AnomalyDetector, merge_scales

VARIANTS = ("memory-full", "simplenet-full")
_counts: dict[str, int] = {}


def full_scale_rows(count: int) -> torch.Tensor:
    """Indices of the full scale's patches among ``count`` cached patches (all images)."""
    rows = torch.arange(count).view(-1, _counts["per_image"])
    return rows[:, : _counts["full"]].reshape(-1)


def patch(variant: str) -> None:
    """Makes the fit and the detector keep one term at the full scale only."""
    extract = trainer_module.extract_patch_features
    coreset = trainer_module.greedy_coreset
    train_heads = trainer_module.train_heads
    memory_full = variant == "memory-full"

    def extract_counting(backbone, aggregator, images, config, progress=None, **kwargs):
        features, pooled = extract(backbone, aggregator, images, config, progress, **kwargs)
        height, width = trainer_module._grid(backbone, config.image_size)
        _counts.update(per_image=features.shape[1], full=height * width)
        return features, pooled

    def full_scale_coreset(patches, size, **kwargs):
        keep = full_scale_rows(len(patches))
        return keep[torch.as_tensor(coreset(patches[keep], size, **kwargs))]

    def full_scale_heads(features, *args, **kwargs):
        return train_heads(features[:, : _counts["full"]], *args, **kwargs)

    def score_terms(detector, batch, distances, *, cuda_dtype=None):
        """``AnomalyDetector.score_terms`` for the variant, in the fit and at inference."""
        layer_maps, score_maps = detector.scale_maps(batch, cuda_dtype=cuda_dtype)
        simplenet = merge_scales(score_maps) if memory_full else score_maps[0]
        if distances is None:
            return layer_maps, simplenet, None
        scales = layer_maps[:1] if memory_full else layer_maps
        maps = [distances(detector.aggregator([m.float() for m in layers])) for layers in scales]
        return layer_maps, simplenet, merge_scales(maps)

    trainer_module.extract_patch_features = extract_counting
    if memory_full:
        trainer_module.greedy_coreset = full_scale_coreset
    else:
        trainer_module.train_heads = full_scale_heads
    AnomalyDetector.score_terms = score_terms


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in VARIANTS:
        raise SystemExit(f"usage: python bench/scale_memory.py {{{','.join(VARIANTS)}}} [...]")
    variant = sys.argv.pop(1)
    patch(variant)
    print(f"variant: second scale, {variant}")
    quality.main()


if __name__ == "__main__":
    main()
