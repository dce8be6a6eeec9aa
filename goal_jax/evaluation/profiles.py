"""Named benchmark profiles: which datasets, splits, cut-offs and table columns each paper reports.

Protocols differ between papers (splits, caption sets and cut-offs), so results are reported
per profile and never mixed:
- `goal`: GOAL/MulCLIP. DOCCI test + qual_test (5,100, GOAL's `docci_test.json`), GOAL's own DCI
  test split (1,999), Urban1k (1,000); T2I R@1/5/25/50 then I2T R@1/5/25/50, as GOAL's tables
  and `retrieval_goal.py` print them; plus the joint global+local mAP@10 on GOAL's DCI split.
- `longclip`: the Long-CLIP/FineLIP zero-shot protocol. Urban1k, DOCCI test (5,000),
  ShareGPT4V first 1,000, COCO Karpathy 5k test (5 captions per image); I2T before T2I, R@1/5/10,
  the order of Long-CLIP's tables and the "I2T / T2I" convention of its followers.
- `zeroshot`: CIFAR-10/100, ImageNet-O, ImageNet-V2 top-1 (MulCLIP's classification table) and
  ImageNet top-1/top-5 (Long-CLIP); images come from user folders, not TFDS.
- `synthetic`: the procedural data, for runs without real data. `Synthetic test`: R@K over the
  `test` split; `Synthetic hard: R@K over split`: R@K over all of `test_hard`, where every image
  competes with its group's near-copies and all other groups; `Synthetic hard: within group`: does
  the model see details? Caption-image matching inside each `test_hard` group (a base scene and
  variants that change one attribute), chance 25%, and two-alternative accuracy per edited
  attribute (`metrics.hard_group_scores`). From the data's version 3 on, `Synthetic transfer`
  and `Synthetic transfer hard: within group` ask the same on `test_transfer(_hard)`, scenes that
  hold colour–shape pairs no training scene holds (`goal_jax.data.synthetic`); the profile
  `synthetic_v2` leaves them out for data prepared with `--version=2` or 1.

Dataset names are TFDS builder names; split strings use TFDS split syntax (`a+b` concatenates).
"""
import dataclasses

from goal_jax.evaluation import metrics

GOAL_KS = (1, 5, 25, 50)
LONGCLIP_KS = (1, 5, 10)


def recall_columns(ks, first="t2i"):
  """Metric keys in table order: one direction's R@K for every K, then the other's."""
  second = "i2t" if first == "t2i" else "t2i"
  return tuple(f"{d}_R@{k}" for d in (first, second) for k in ks)


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One row of a results table.

  Attributes:
    name: row label and key in the results JSON.
    task: "retrieval" (Recall@K), "joint" (GOAL's joint global+local mAP), "hard_groups"
      (matching inside groups of near-identical scenes, `metrics.hard_group_scores`) or
      "zeroshot".
    dataset: TFDS builder name ("" for zero-shot folders supplied by the user).
    split: TFDS split string.
    ks: cut-offs to compute.
    columns: metric keys in the table's column order.
    num_images: expected number of test images (None: not fixed), checked by the evaluator.
    zeroshot_set: key of zeroshot.ZEROSHOT_SETS for task "zeroshot".
    joint_mode: relevance of task "joint" (metrics.JOINT_MODES): "effective" reproduces the
      numbers GOAL's released script prints, "intended" the relevance its code aims at.
  """
  name: str
  task: str
  dataset: str
  split: str
  ks: tuple
  columns: tuple
  num_images: int | None = None
  zeroshot_set: str | None = None
  joint_mode: str | None = None


@dataclasses.dataclass(frozen=True)
class Profile:
  name: str
  description: str
  benchmarks: tuple

  def benchmark(self, name):
    for b in self.benchmarks:
      if b.name == name:
        return b
    raise KeyError(f"profile {self.name!r} has no benchmark {name!r}; "
                   f"have {[b.name for b in self.benchmarks]}")


def _goal_retrieval(name, dataset, split, num_images):
  return Benchmark(name, "retrieval", dataset, split, GOAL_KS, recall_columns(GOAL_KS, "t2i"),
                   num_images)


def _goal_joint(mode):
  # Gallery: the 1,999 global pairs of GOAL's DCI test plus one local pair (crop, sentence) each.
  return Benchmark(f"DCI joint ({mode})", "joint", "dci", "goal_test", (10,),
                   ("t2i_mAP@10", "i2t_mAP@10"), 1999, joint_mode=mode)


def _longclip_retrieval(name, dataset, split, num_images):
  return Benchmark(name, "retrieval", dataset, split, LONGCLIP_KS,
                   recall_columns(LONGCLIP_KS, "i2t"), num_images)


def _hard_groups(name, dataset, split):
  # Columns a run lacks (attributes its ids do not name, e.g. version-1 ids) print as missing.
  attributes = ("colour", "shape", "size", "texture", "binding")
  return Benchmark(name, "hard_groups", dataset, split, (),
                   metrics.HARD_GROUP_KEYS + tuple(f"2afc_{a}" for a in attributes))


def _zeroshot(name, ks=(1,)):
  return Benchmark(name, "zeroshot", "", "", ks, tuple(f"top{k}" for k in ks),
                   zeroshot_set=name)


_SYNTHETIC_IN_DOMAIN = (
    _goal_retrieval("Synthetic test", "synthetic", "test", None),
    _goal_retrieval("Synthetic hard: R@K over split", "synthetic", "test_hard", None),
    _hard_groups("Synthetic hard: within group", "synthetic", "test_hard"),
)

PROFILES = {
    "goal": Profile(
        "goal", "GOAL/MulCLIP long-caption retrieval (in-domain DOCCI, GOAL's DCI split)",
        (
            _goal_retrieval("DOCCI", "docci", "test+qual_test", 5100),
            _goal_retrieval("DCI", "dci", "goal_test", 1999),
            _goal_retrieval("Urban1k", "urban1k", "test", 1000),
            _goal_joint("effective"),
            _goal_joint("intended"),
        )),
    "longclip": Profile(
        "longclip", "Long-CLIP/FineLIP zero-shot long- and short-caption retrieval",
        (
            _longclip_retrieval("Urban1k", "urban1k", "test", 1000),
            _longclip_retrieval("DOCCI", "docci", "test", 5000),
            _longclip_retrieval("ShareGPT4V-1k", "sharegpt4v", "val_1k", 1000),
            _longclip_retrieval("COCO 5k", "coco_karpathy", "test", 5000),
        )),
    "zeroshot": Profile(
        "zeroshot", "Zero-shot classification after adaptation (MulCLIP, Long-CLIP)",
        (
            _zeroshot("cifar10"),
            _zeroshot("cifar100"),
            _zeroshot("imagenet_o"),
            _zeroshot("imagenet_v2"),
            _zeroshot("imagenet", ks=(1, 5)),
        )),
    "synthetic": Profile(
        "synthetic", "Procedural data: retrieval on `test` and `test_hard`, whether the model "
        "tells apart scenes that differ in one detail (`test_hard` groups), and the same on "
        "colour–shape pairs it never trained on (`test_transfer`, `test_transfer_hard`)",
        _SYNTHETIC_IN_DOMAIN + (
            _goal_retrieval("Synthetic transfer", "synthetic", "test_transfer", None),
            _hard_groups("Synthetic transfer hard: within group", "synthetic",
                         "test_transfer_hard"),
        )),
    "synthetic_v2": Profile(
        "synthetic_v2", "Procedural data of version 2 or 1 (no transfer splits): retrieval on "
        "`test` and `test_hard`, and the `test_hard` groups", _SYNTHETIC_IN_DOMAIN),
}


def get_profile(name):
  if name not in PROFILES:
    raise ValueError(f"unknown evaluation profile {name!r}; have {sorted(PROFILES)}")
  return PROFILES[name]
