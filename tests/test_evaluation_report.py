"""Results JSON schema, Markdown row/column order, and profiles that match the metrics' keys."""
import json

import numpy as np
import pytest

from goal_jax.evaluation import metrics, profiles, report, zeroshot


def fake_metrics(benchmark, offset=0.0):
  return {column: 10.0 * i + offset + 0.123 for i, column in enumerate(benchmark.columns)}


def test_goal_profile_data():
  goal = profiles.get_profile("goal")
  docci = goal.benchmark("DOCCI")
  assert (docci.dataset, docci.split, docci.num_images) == ("docci", "test+qual_test", 5100)
  assert (goal.benchmark("DCI").split, goal.benchmark("DCI").num_images) == ("goal_test", 1999)
  assert goal.benchmark("Urban1k").num_images == 1000
  assert docci.columns == ("t2i_R@1", "t2i_R@5", "t2i_R@25", "t2i_R@50",
                           "i2t_R@1", "i2t_R@5", "i2t_R@25", "i2t_R@50")
  longclip = profiles.get_profile("longclip")
  assert [b.name for b in longclip.benchmarks] == ["Urban1k", "DOCCI", "ShareGPT4V-1k", "COCO 5k"]
  assert longclip.benchmark("DOCCI").split == "test"
  assert longclip.benchmark("COCO 5k").columns[:3] == ("i2t_R@1", "i2t_R@5", "i2t_R@10")
  synthetic = profiles.get_profile("synthetic")
  assert [(b.name, b.task, b.split) for b in synthetic.benchmarks] == [
      ("Synthetic test", "retrieval", "test"),
      ("Synthetic hard: R@K over split", "retrieval", "test_hard"),
      ("Synthetic hard: within group", "hard_groups", "test_hard"),
      ("Synthetic transfer", "retrieval", "test_transfer"),
      ("Synthetic transfer hard: within group", "hard_groups", "test_transfer_hard")]
  # Data of version 2 or 1 has no transfer splits: its profile is the in-domain three.
  assert profiles.get_profile("synthetic_v2").benchmarks == synthetic.benchmarks[:3]
  within = synthetic.benchmark("Synthetic hard: within group")
  assert within.ks == () and within.columns == (
      "group_t2i_acc", "group_i2t_acc", "group_acc", "2afc_colour", "2afc_shape", "2afc_size",
      "2afc_texture", "2afc_binding")
  with pytest.raises(ValueError, match="unknown evaluation profile"):
    profiles.get_profile("clip")


def test_every_profile_column_is_a_key_the_metrics_produce():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(60, 8)).astype(np.float32)
  texts = rng.normal(size=(60, 8)).astype(np.float32)
  groups, is_global = np.repeat(np.arange(30), 2), np.tile([True, False], 30)
  edits = ["base", "colour", "shape", "size", "texture", "binding"] * 10  # groups of 6
  for profile in profiles.PROFILES.values():
    for b in profile.benchmarks:
      if b.task == "retrieval":
        keys = metrics.retrieval_recall(images, texts, ks=b.ks).keys()
      elif b.task == "joint":
        keys = metrics.joint_retrieval(images, texts, groups, is_global, mode=b.joint_mode,
                                       k=b.ks[0]).keys()
      elif b.task == "hard_groups":
        keys = metrics.hard_group_scores(images, texts, np.repeat(np.arange(10), 6), edits).keys()
      else:
        assert b.zeroshot_set in zeroshot.ZEROSHOT_SETS
        keys = zeroshot.classify(images, texts[:10], rng.integers(0, 10, 60), ks=b.ks).keys()
      assert set(b.columns) <= set(keys), (profile.name, b.name)


def test_results_json_schema_and_order(tmp_path):
  goal = profiles.get_profile("goal")
  results = {b.name: report.benchmark_result(b, fake_metrics(b), num_images=b.num_images,
                                             num_texts=b.num_images)
             for b in reversed(goal.benchmarks)}  # Inserted in reverse on purpose.
  path = tmp_path / "out" / "results.json"
  report.write_results(str(path), "goal", results, metadata={"checkpoint": "ckpt/7"})
  with open(path) as f:
    raw = json.load(f)
  assert set(raw) == {"schema", "profile", "metadata", "results"}
  assert raw["schema"] == report.SCHEMA and raw["profile"] == "goal"
  assert raw["metadata"] == {"checkpoint": "ckpt/7"}
  assert list(raw["results"]) == [b.name for b in goal.benchmarks]
  docci = raw["results"]["DOCCI"]
  assert docci == {"task": "retrieval", "dataset": "docci", "split": "test+qual_test",
                   "num_images": 5100, "num_texts": 5100,
                   "metrics": fake_metrics(goal.benchmark("DOCCI"))}
  assert report.read_results(str(path)) == raw


def test_markdown_goal_rows_and_columns():
  goal = profiles.get_profile("goal")
  results = {b.name: report.benchmark_result(b, fake_metrics(b, offset=n))
             for n, b in enumerate(goal.benchmarks)}
  del results["DCI"]  # A benchmark that was not run has no row.
  results["Urban1k"]["metrics"].pop("i2t_R@50")  # A missing value prints a dash.
  text = report.markdown_table(report.results_document("goal", results))
  tables = text.strip().split("\n\n")
  assert len(tables) == 2  # Recall rows, then joint mAP rows.
  recall = tables[0].splitlines()
  assert recall[0] == ("| Benchmark | T2I R@1 | T2I R@5 | T2I R@25 | T2I R@50 "
                       "| I2T R@1 | I2T R@5 | I2T R@25 | I2T R@50 |")
  assert recall[1] == "|---|---|---|---|---|---|---|---|---|"
  assert recall[2] == ("| DOCCI | 0.12 | 10.12 | 20.12 | 30.12 | 40.12 | 50.12 | 60.12 "
                       "| 70.12 |")
  assert recall[3].startswith("| Urban1k | 2.12 | 12.12 |") and recall[3].endswith("| – |")
  assert len(recall) == 4
  joint = tables[1].splitlines()
  assert joint[0] == "| Benchmark | T2I mAP@10 | I2T mAP@10 |"
  assert [line.split(" | ")[0] for line in joint[2:]] == ["| DCI joint (effective)",
                                                         "| DCI joint (intended)"]


def test_markdown_longclip_puts_i2t_first():
  longclip = profiles.get_profile("longclip")
  results = {b.name: report.benchmark_result(b, fake_metrics(b)) for b in longclip.benchmarks}
  lines = report.markdown_table(report.results_document(longclip, results)).splitlines()
  assert lines[0] == "| Benchmark | I2T R@1 | I2T R@5 | I2T R@10 | T2I R@1 | T2I R@5 | T2I R@10 |"
  assert [line.split(" | ")[0] for line in lines[2:]] == [
      "| Urban1k", "| DOCCI", "| ShareGPT4V-1k", "| COCO 5k"]


def test_unregistered_profile_writes_and_tabulates(tmp_path):
  goal, longclip = profiles.get_profile("goal"), profiles.get_profile("longclip")
  mixed = (goal.benchmark("DOCCI"), longclip.benchmark("COCO 5k"))
  custom = profiles.Profile("custom", "picked by name", mixed)
  assert "custom" not in profiles.PROFILES
  results = {b.name: report.benchmark_result(b, fake_metrics(b)) for b in reversed(mixed)}
  path = tmp_path / "custom.json"
  report.write_results(str(path), custom, results)
  document = report.read_results(str(path))
  assert document["profile"] == "custom" and list(document["results"]) == ["DOCCI", "COCO 5k"]
  tables = report.markdown_table(document, profile=custom).strip().split("\n\n")
  # Two column sets (GOAL's T2I-first R@1/5/25/50, Long-CLIP's I2T-first R@1/5/10): two tables.
  assert tables[0].splitlines()[0].startswith("| Benchmark | T2I R@1 | T2I R@5 | T2I R@25 |")
  assert tables[0].splitlines()[2].startswith("| DOCCI | 0.12 | 10.12 |")
  assert tables[1].splitlines()[0].startswith("| Benchmark | I2T R@1 | I2T R@5 | I2T R@10 |")
  assert tables[1].splitlines()[2] == "| COCO 5k | 0.12 | 10.12 | 20.12 | 30.12 | 40.12 | 50.12 |"
  assert "custom" not in profiles.PROFILES  # nothing registered on the way
  with pytest.raises(ValueError, match="unknown evaluation profile 'custom'"):
    report.markdown_table(document)
  with pytest.raises(ValueError, match="written under profile 'custom', not 'goal'"):
    report.markdown_table(document, profile=goal)


def test_report_errors(tmp_path):
  goal = profiles.get_profile("goal")
  docci = goal.benchmark("DOCCI")
  with pytest.raises(ValueError, match="expects 5100 images .*got 5000"):
    report.benchmark_result(docci, {}, num_images=5000)
  with pytest.raises(ValueError, match="t2i_R@1 is not finite"):
    report.benchmark_result(docci, {"t2i_R@1": float("nan")})
  with pytest.raises(ValueError, match="has no benchmark 'COCO 5k'"):
    report.results_document("goal", {"COCO 5k": {}})
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"schema": "other"}))
  with pytest.raises(ValueError, match="bad.json: not a results file"):
    report.read_results(str(bad))


def test_markdown_hard_groups_row_marks_attributes_a_run_lacks():
  synthetic = profiles.get_profile("synthetic")
  within = synthetic.benchmark("Synthetic hard: within group")
  image = np.eye(8, dtype=np.float32)
  values = metrics.hard_group_scores(image, image, np.repeat([0, 1], 4))  # ids without attributes
  results = {within.name: report.benchmark_result(within, values, num_images=8, num_texts=8)}
  lines = report.markdown_table(report.results_document(synthetic, results)).splitlines()
  assert lines[0] == ("| Benchmark | within-group T2I | within-group I2T | within-group mean "
                      "| 2AFC colour | 2AFC shape | 2AFC size | 2AFC texture | 2AFC binding |")
  missing = f" | {report.MISSING}" * 5  # one per attribute column
  assert lines[2] == f"| Synthetic hard: within group | 100.00 | 100.00 | 100.00{missing} |"


def test_per_group_outcomes_kept_beside_the_metrics_and_never_tabled(tmp_path):
  synthetic = profiles.get_profile("synthetic")
  within = synthetic.benchmark("Synthetic hard: within group")
  image = np.eye(8, dtype=np.float32)
  values, per_group = metrics.hard_group_scores(image, image, np.repeat([0, 1], 4),
                                                per_group=True)
  entry = report.benchmark_result(within, values, num_images=8, num_texts=8, per_group=per_group)
  assert entry["per_group"] == {"group_acc": [100.0, 100.0]}
  assert "per_group" not in report.benchmark_result(within, values)
  path = tmp_path / "r.json"
  document = report.write_results(path, synthetic, {within.name: entry})
  assert report.read_results(path) == document
  assert "100.00, 100.00]" not in report.markdown_table(document)
  assert report.markdown_table(document) == report.markdown_table(
      report.results_document(synthetic, {within.name: report.benchmark_result(within, values)}))
  with pytest.raises(ValueError, match="per-group group_acc has a non-finite value"):
    report.benchmark_result(within, values, per_group={"group_acc": [1.0, float("inf")]})
  document["results"][within.name]["per_group"] = {"group_acc": 3.0}
  path.write_text(json.dumps(document))
  with pytest.raises(ValueError, match="'per_group' is not an object of lists"):
    report.read_results(path)


def test_column_labels_name_the_within_group_metrics_apart_from_recall():
  assert [report.column_label(k) for k in ("t2i_R@1", "group_t2i_acc", "group_i2t_acc",
                                           "group_acc", "2afc_binding", "top5")] == [
      "T2I R@1", "within-group T2I", "within-group I2T", "within-group mean", "2AFC binding",
      "Top-5"]
