"""The general FLYT task (emoji_names), the validation cut of single-row classes, the demo's pipeline
seed, and the robustness script's verdict summary."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from flyt.bench.assets import _source_general_emoji, emoji_slug
from flyt.bench.protocol import split_validation
from flyt.io.tasks import Split, Task
from flyt.pipeline.demo import DemoConfig, pipeline_key, scorer_config

ROOT = Path(__file__).resolve().parents[1]

EMOJI_TEST = """# group: Smileys & Emotion
# subgroup: face-smiling
1F600                                      ; fully-qualified     # 😀 E1.0 grinning face
# group: People & Body
# subgroup: hand-fingers-open
1F44B 1F3FD                                ; fully-qualified     # 👋🏽 E1.0 waving hand: medium skin tone
# group: Animals & Nature
# subgroup: animal-mammal
1F436                                      ; fully-qualified     # 🐶 E0.6 dog face
# subgroup: plant-flower
1F339                                      ; fully-qualified     # 🌹 E0.6 rose
# group: Food & Drink
# subgroup: food-prepared
1F35E                                      ; fully-qualified     # 🍞 E0.6 bread
1F950                                      ; fully-qualified     # 🥐 E3.0 croissant
# group: Flags
# subgroup: country-flag
1F1EF 1F1F5                                ; fully-qualified     # 🇯🇵 E0.6 flag: Japan
"""


def _iconify(path: Path, names: list[str]) -> None:
    path.mkdir(parents=True)
    icons = {n: {"body": f'<rect width="8" height="8" fill="#{i % 10}{i % 10}0"/>'} for i, n in enumerate(names)}
    (path / "icons.json").write_text(json.dumps({"prefix": path.name, "icons": icons, "width": 8, "height": 8}))


def test_general_emoji_source_pairs_both_drawings_and_leaves_out_flags_animals_and_tones(tmp_path):
    (tmp_path / "root/usr/share/unicode/emoji").mkdir(parents=True)
    (tmp_path / "root/usr/share/unicode/emoji/emoji-test.txt").write_text(EMOJI_TEST, encoding="utf-8")
    every = ["grinning-face", "waving-hand-medium-skin-tone", "dog-face", "rose", "bread", "flag-japan"]
    base = tmp_path / "npm-general/node_modules/@iconify-json"
    _iconify(base / "emojione", every + ["croissant"])  # croissant: one drawing only, not a class
    _iconify(base / "emojione-v1", every)
    recs, jobs = _source_general_emoji(tmp_path / "root", tmp_path)
    assert sorted({r["group"] for r in recs}) == ["bread", "grinning face", "rose"]
    assert sorted((r["group"], r["subgroup"]) for r in recs) == sorted(
        (g, s) for g in ("bread", "grinning face", "rose") for s in ("emojione", "emojione-v1"))
    assert len(jobs) == len(recs) and all(kind == "svgtext" for kind, _ in jobs)
    assert emoji_slug("T-Rex") == "t-rex" and emoji_slug("flag: Japan") == "flag-japan"


def _task(labels):
    labels = np.asarray(labels, dtype=np.int64)
    images = np.repeat(np.arange(len(labels), dtype=np.float32)[:, None], 4, axis=1)  # row i holds i
    n = int(labels.max()) + 1
    return Task("t", [f"c{i}" for i in range(n)], ["{c}"], np.zeros((1, n, 4), np.float32),
                Split(images, labels), Split(images[:1], labels[:1]))


def test_single_row_classes_go_to_validation_by_class_and_other_tasks_are_cut_as_before():
    # class 0: 8 rows (2 to validation); classes 1..8: one row each (round(8 * 0.25) = 2 classes to validation)
    labels = [0] * 8 + list(range(1, 9))
    (task,) = split_validation([_task(labels)], 0.25, seed=3)
    val, fit = task.validation.labels, task.train.labels
    assert (val == 0).sum() == 2 and (fit == 0).sum() == 6
    single_val = sorted(set(val.tolist()) - {0})
    assert len(single_val) == 2 and not set(single_val) & set(fit.tolist())
    assert len(val) + len(fit) == len(labels)
    # a task whose classes all have two or more rows: exactly the per-class cut (seeded permutations)
    (plain,) = split_validation([_task([0] * 8 + [1] * 4)], 0.25, seed=3)
    rng = np.random.default_rng(3)
    expect = np.concatenate([rng.permutation(np.arange(8))[:2], rng.permutation(np.arange(8, 12))[:1]])
    assert sorted(plain.validation.images[:, 0].astype(int).tolist()) == sorted(expect.tolist())


def test_pipeline_seed_zero_keeps_the_demo_keys_and_others_differ(tmp_path):
    base = DemoConfig(out=tmp_path)
    assert pipeline_key("k", base) == "k"
    assert "seed" not in scorer_config(base, "flyt", tmp_path, [])
    assert scorer_config(base, "mflyt", tmp_path, [])["score_clip"] == 3.0
    assert "score_clip" not in scorer_config(base, "flyt", tmp_path, [])
    s1, s2 = DemoConfig(out=tmp_path, pipeline_seed=1), DemoConfig(out=tmp_path, pipeline_seed=2)
    assert len({pipeline_key("k", c) for c in (base, s1, s2)}) == 3
    assert scorer_config(s1, "flyt", tmp_path, [])["seed"] == 1


def _robustness():
    spec = importlib.util.spec_from_file_location("demo_robustness", ROOT / "benchmarks/demo_robustness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_robustness_verdicts_count_runs_and_margins():
    rob = _robustness()

    def run(margin, std):
        cmp = {"mean": 0.3 + margin, "std": std, "reference_mean": 0.3, "reference_std": 0.01, "margin": margin,
               "beats": margin > 0, "beyond_spread": margin > max(std, 0.01)}
        res = {n: {"mean": {"average_heldout": 0.3}, "std": {"average_heldout": 0.01}} for n in ("flyt_scs", "mflyt_scs")}
        res["mflyt_scs"]["mean"]["average_heldout"] += margin
        return {"comparisons": {"average_heldout": {n: {r: cmp for r in rob.REFERENCES} for n in rob.LEARNED}},
                "results": res}

    rows = rob.verdicts([run(0.05, 0.01), run(0.005, 0.01), run(-0.02, 0.01)])
    row = next(v for v in rows if (v["learned"], v["reference"], v["average"]) == ("flyt_scs", "no_filter",
                                                                                      "average_heldout"))
    assert row["beats"] == 2 and row["beyond_spread"] == 1 and row["runs"] == 3
    assert row["margin_mean"] == pytest.approx(0.035 / 3)
    assert row["margin_std_across_runs"] == pytest.approx(np.std([0.05, 0.005, -0.02]))
    order = next(v for v in rows if v["reference"] == "flyt_scs")
    assert order["beats"] == 2 and order["margins"] == pytest.approx([0.05, 0.005, -0.02])


def test_the_choice_rule_picks_each_kinds_best_option_first_on_ties_and_skips_missing():
    from flyt.bench.protocol import best_of_each_kind, best_option
    from flyt.bench.strategies import SoftCapSampling, TopFraction

    assert best_option([0.2, None, 0.5, 0.5, 0.1]) == 2  # the first of the best; no student = -inf
    assert best_option([None, 0.0]) == 1
    top, scs = TopFraction("t", "t", "flyt", (0.3, 0.5)), SoftCapSampling("s", "s", "flyt", (0.01, 0.05))
    options = [(top, 0.3), (scs, 0.01), (top, 0.5), (scs, 0.05)]
    assert best_of_each_kind(options, [0.1, 0.4, 0.3, 0.4]) == {"topk": 2, "scs": 1}
    assert best_of_each_kind(options, [0.9, 0.1, 0.3, 0.2], kinds=("scs",)) == {"scs": 3}
