"""BENCHMARKS.md from the JSON lines the benchmarks printed: ``python -m bench.report bench/results``.

Every figure in the report comes from a results file, the machine each section ran on included (its ``machine``
record: the CPU as /proc/cpuinfo names it); nothing is typed in by hand. ``tests/test_bench.py`` checks that
BENCHMARKS.md is this module's output. A benchmark's section is one :class:`Section` in :data:`SECTIONS`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import aug_finetune, scale, startup
from bench import best as best_bench
from bench.common import NOMINAL_PEAK_GFLOPS

EXPLAIN_NAMES = {"gradcam_warm_s": "Grad-CAM", "gradcampp_warm_s": "Grad-CAM++", "scorecam_warm_s": "Score-CAM (64 channels)",
                 "occlusion_warm_s": "occlusion (100 positions)"}  # fmt: skip


def load(results: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name in (section.name for section in SECTIONS):
        path = results / f"{name}.json"
        if path.exists() and path.read_text().strip():
            out[name] = json.loads(path.read_text().strip().splitlines()[-1])
    return out


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, bool):
            return "yes" if v else "**no**"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_name(m: dict[str, Any]) -> str:
    """A machine as its results file names it: the CPU model string, its family/model and cores."""
    return f"{m.get('cpu')} (family/model {m.get('cpu_family_model')}), {m.get('cores')} cores"


def load_line(fig: dict[str, Any]) -> str:
    ld = fig.get("load", {})
    return (
        f"Ran on {machine_name(fig.get('machine', {}))}, measured {fig.get('date')}; other processes used {ld.get('others_cores_mean')} cores on average "
        f"(at most {ld.get('others_cores_max')}) of the 2 while timing; 1-minute load average up to "
        f"{ld.get('loadavg_1m_max')}. Command: `{fig.get('command')}`."
    )


def section_machine(figs: dict[str, dict[str, Any]]) -> str:
    """Every machine the results ran on, each with the sections measured there (from each file's own record)."""
    machines: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for section in SECTIONS:
        if section.name in figs:
            m = figs[section.name].get("machine", {})
            machines.setdefault(machine_name(m), (m, []))[1].append(section.title)
    lines = [
        "## Machines",
        "",
        f"The sections ran on {len(machines)} machine{'s' if len(machines) != 1 else ''}, each named from its own "
        "results file (`machine` in `bench/results/<name>.json`: the CPU model string, family/model and flags as "
        "/proc/cpuinfo reports them):",
        "",
    ]
    for name, (m, titles) in machines.items():
        lines.append(
            f"- {name}, {m.get('memory_gib')} GiB; vector-extension flags reported: {', '.join(m.get('isa', []))}; "
            f"Python {m.get('python')}, TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}. "
            f"Sections: {'; '.join(titles)}."
        )
    lines.append(
        f"- fp32 peak used for fractions: the issue's {NOMINAL_PEAK_GFLOPS:.0f} GFLOP/s (2 cores x 2.1 GHz x 64 "
        "FLOP/cycle); what a machine reaches is the *measured* ceiling below."
    )
    ts = figs.get("train_step")
    if ts:
        c = ts["measured_ceiling_gflops"]
        lines.append(
            f"- Measured ceiling on {machine_name(ts.get('machine', {}))} (best of three large convolutions and two "
            f"matrix products, `measured_ceiling` in bench/train_step.py): fp32 {c['float32']} GFLOP/s, bf16 "
            f"{c['bfloat16']} GFLOP/s."
        )
    lines.append(
        "- The machine was shared with other engineers' test runs. Every benchmark records the CPU that *other* "
        "processes used while it timed (`others_cores`: 0 = the machine was ours, 1 = a whole core was taken) and "
        "compares baseline and candidate in the same run, so ratios are more trustworthy than absolute figures."
    )
    return "\n".join(lines)


# -- the targets table: one row function per benchmark, called in SECTIONS' order ---------------------------
Row = list[Any]


def targets_pipeline(p: dict[str, Any]) -> list[Row]:
    return [["input pipeline vs ImageDataGenerator", f"{p['dataset']}, study augmentations, {size} px", f"{r['ratio']}x",
             "≥ 3x", r["ratio"] >= 3] for size, r in p["sizes"].items()]  # fmt: skip


def targets_train_step(t: dict[str, Any]) -> list[Row]:
    b = t["best"]
    f32 = t.get("best_fp32_fraction_of_nominal_peak")
    measured = f"{b['achieved_gflops']} GFLOP/s = {100 * b['fraction_of_nominal_peak']:.0f}% of {NOMINAL_PEAK_GFLOPS:.0f}"
    measured += f" (best fp32: {100 * f32:.0f}%)" if f32 is not None else ""
    where = f"DenseNet121 -{b['remove_blocks']} blocks, {b['image_size']} px, {b['precision']}"
    return [["best training step, share of fp32 peak", where, measured, "≥ 40%, or bf16 above it",
             b["fraction_of_nominal_peak"] >= 0.4]]  # fmt: skip


def targets_tta(a: dict[str, Any]) -> list[Row]:
    ratio = a["ratio"]
    shown = "–" if ratio is None else (f"≥ {ratio}x" if a["ratio_is_lower_bound"] else f"{ratio}x")
    return [[f"time to test accuracy ≥ {a['target_accuracy']}", f"{a['dataset']}, EfficientNet-Lite0 ImageNet, "
             f"{a['image_size']} px", shown, "≥ 5x sooner", ratio is not None and ratio >= 5]]  # fmt: skip


def targets_latency(lat: dict[str, Any]) -> list[Row]:
    names = {
        "show_cached_run_s": "show a cached run",
        "head_retrain_warm_s": "retrain a head on cached features",
        "preview_redraw_s": "redraw the augmentation preview",
        "feature_maps_warm_s": "activation maps, warm",
        "repeat_arch_first_step_s": "first step, architecture already used",
        **{k: f"{v}, warm" for k, v in EXPLAIN_NAMES.items()},
        "projection_cold_s": "projection of every image, features cached, first time",
        "projection_cached_s": "projection of every image, cached",
    }
    projected = f"{lat.get('dataset')}, {lat.get('projection_images')} images, {lat['head_runs']}, PCA and t-SNE"
    where = {
        **{k: f"{lat['head_runs']}, {lat.get('explain_block')}" for k in EXPLAIN_NAMES},
        "projection_cold_s": projected,
        "projection_cached_s": projected,
        "show_cached_run_s": lat["head_runs"],
        "head_retrain_warm_s": lat["head_runs"],
        "preview_redraw_s": f"{lat['dataset']}, {lat['preview']}",
        "feature_maps_warm_s": lat["head_runs"],
        "repeat_arch_first_step_s": lat["first_step_runs_model"],
    }
    return [[names[key], where[key], f"{lat.get(key)} s", f"≤ {target} s", lat["met"][key]]
            for key, target in lat["targets"].items() if key in lat["met"]]  # fmt: skip


def targets_reproduce(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for mode, f in (r.get("modes") or {"quick": r}).items():
        where = f"{f['dataset']}, {f['backbone']}, {f['image_size']} px, {f['trials']} trials, {mode} mode"
        rows += [[label, where, f"{f[key]} s", f"≤ {f['targets'][key]:g} s", f[key] <= f["targets"][key]]
                 for key, label in (("first_s", "the whole study reproduced, empty artifacts"),
                                    ("second_s", "the whole study again, every row cached"))]  # fmt: skip
    return rows


def targets_repeats(r: dict[str, Any]) -> list[Row]:
    f = r["modes"]["faithful"]
    where = f"{f['dataset']}, {f['backbone']}, {f['image_size']} px, tasks 0-4, {f['repeats']} seeds per row"
    return [[label, where, f"{f[key]} s", f"≤ {f['targets'][key]:g} s", f[key] <= f["targets"][key]]
            for key, label in (("first_s", "the study fine-tuned with repeats, empty artifacts"),
                               ("second_s", "the same again, every row cached"))]  # fmt: skip


def targets_bundled(b: dict[str, Any]) -> list[Row]:
    return [["unpack the bundled dataset (first start)", f"{b['dataset']}, {b['images']} images", f"{b['unpack_s']} s",
             f"≤ {b['targets']['unpack_s']:g} s", b["unpack_s"] <= b["targets"]["unpack_s"]]]  # fmt: skip


def summary(figs: dict[str, dict[str, Any]]) -> str:
    rows = [row for section in SECTIONS if section.name in figs for row in section.targets(figs[section.name])]
    return "## Targets\n\n" + md_table(["figure", "dataset / backbone / size", "measured", "target", "met"], rows)


def section_pipeline(p: dict[str, Any]) -> str:
    rows = []
    for size, r in p["sizes"].items():
        rows.append(
            [
                size,
                r["study_images_per_s"],
                r["scenelab_images_per_s"],
                f"{r['ratio']}x",
                r.get("parallel_images_per_s", "–"),
                r["keras_chain_images_per_s"],
                r["scenelab_decode_once_s"],
            ]
        )
    return "\n".join(
        [
            "## 1. Training input pipeline (bench/pipeline.py)",
            "",
            f"Images/s with the study's augmentations ({', '.join(f'{k} {v}' for k, v in p['augmentation'].items())}), "
            f"batch {p['batch_size']}, drained alone (no model), {p['dataset']} ({p['images']} training images). "
            "*study*: `ImageDataGenerator(...).flow_from_directory` (Keras 3: "
            "`keras.src.legacy.preprocessing.image`), which reads, decodes and transforms every JPEG with SciPy each "
            "epoch. *SceneLab*: `core.data.arrays.make_tf_dataset` on the decoded uint8 cache with "
            "`core.data.augment.build_augmenter`, whose `RandomAffine` composes rotation, shift, shear, zoom and flip into one "
            "matrix per image and resamples once (XLA-compiled). *before*: the chain of Keras "
            "RandomFlip/Rotation/Translation/Shear/Zoom layers SceneLab used until now. *parallel map*: SceneLab's pipeline "
            "with the augmentation map run with parallel calls, as before: it raced on the augmenter's random state, so "
            "augmented runs did not repeat; SceneLab now maps one batch at a time.",
            "",
            md_table(
                [
                    "px",
                    "study img/s",
                    "SceneLab img/s",
                    "ratio",
                    "former parallel map img/s",
                    "before: Keras layer chain img/s",
                    "decode once (s)",
                ],
                rows,
            ),
            "",
            load_line(p),
        ]
    )


def section_train_step(t: dict[str, Any]) -> str:
    rows = []
    for r in t["results"]:
        what = f"frozen first {r['freeze_blocks']} (cached prefix)" if r["freeze_blocks"] else f"-{r['remove_blocks']}"
        rows.append(
            [
                r["precision"],
                r["image_size"],
                what,
                r["images_per_s"],
                r["first_step_s"],
                r["train_gflop_per_image"],
                r["achieved_gflops"],
                f"{100 * r['fraction_of_nominal_peak']:.0f}%",
                f"{100 * r['fraction_of_measured_fp32_ceiling']:.0f}%",
                r["others_cores"],
            ]
        )
    return "\n".join(
        [
            "## 2. Training step (bench/train_step.py)",
            "",
            f"DenseNet121 (random weights; speed does not depend on them), phase `full` (BatchNorm frozen), Adam, batch "
            f"{t['batch_size']}, random images. FLOPs per image are counted by `tf.compat.v1.profiler` on the concrete "
            "function of one training step (forward, loss and all gradients). *blocks*: `-K` = K dense blocks removed; "
            "*frozen first K (cached prefix)* = partial fine-tuning, where the step runs only the blocks after the first K "
            "on cached activations. *first step* includes graph tracing. *of measured* = share of the measured fp32 "
            f"convolution/matmul ceiling. Threads: {t['threads']} (0 = TensorFlow's default, all cores).",
            "",
            md_table(
                [
                    "precision",
                    "px",
                    "blocks",
                    "img/s",
                    "first step (s)",
                    "GFLOP/img",
                    "GFLOP/s",
                    f"of {NOMINAL_PEAK_GFLOPS:.0f}",
                    "of measured",
                    "others (cores)",
                ],
                rows,
            ),
            "",
            load_line(t),
        ]
    )


def section_tta(a: dict[str, Any]) -> str:
    budgets = a["budgets_seconds"]
    within = a["accuracy_within_budget"]

    def at(arm: str) -> list[Any]:
        return [within[f"{b:g}"].get(arm) for b in budgets]

    rows = [[arm["arm"], arm["what"], arm["seconds"], arm["test_accuracy"], *at(arm["arm"])] for arm in a["scenelab"]]
    s = a["study"]
    reached = s["seconds_to_target"] if s["seconds_to_target"] is not None else f"not reached in {s['seconds']}"
    rows.append(["study", s["what"], reached, s["test_accuracy"], *at("study")])
    timeline = ", ".join(f"{row[0]} s: {row[1]} ({row[2]})" for row in s["timeline"])
    ratio = a["ratio"]
    ratio_text = "–" if ratio is None else (f"≥ {ratio}x (lower bound)" if a["ratio_is_lower_bound"] else f"{ratio}x")
    return "\n".join(
        [
            "## 3. Time to accuracy (bench/time_to_accuracy.py)",
            "",
            f"Wall time from nothing cached (a fresh process and an empty artifacts folder) to test accuracy ≥ "
            f"{a['target_accuracy']} on {a['dataset']}, EfficientNet-Lite0 with ImageNet weights at {a['image_size']} px "
            "for both arms. SceneLab arms are `core.training.train.train` runs (with their own validation split carved from "
            "train); the study arm trains on all training images, its test checks are off the clock, and it keeps "
            f"training until the last budget. **SceneLab ({a['scenelab_best']}) reaches the target {ratio_text} sooner.**",
            "",
            md_table(
                ["arm", "recipe", f"seconds to {a['target_accuracy']}", "last test accuracy"]
                + [f"accuracy by {b:g} s" for b in budgets],
                rows,
            ),
            "",
            f"Study timeline (seconds on the clock: test accuracy, phase): {timeline}.",
            "",
            load_line(a),
        ]
    )


def _explain_labels() -> dict[str, str]:
    """Rows of the explanation and projection figures (bench/latency.py, step 5)."""
    out = {}
    for who, words in (("", "the run"), ("_imagenet", "the ImageNet backbone, 1000 classes")):
        for key, name in EXPLAIN_NAMES.items():
            stem = key[: -len("_warm_s")]
            out[f"{stem}{who}_first_s"] = f"{name} by {words}, first (compiles)"
            out[f"{stem}{who}_warm_s"] = f"{name} by {words}, warm"
    out["compare_gradcam_warm_s"] = "before/after comparison (Grad-CAM by both models), warm"
    for method, name in (("pca", "PCA"), ("tsne", "t-SNE")):
        for who, words in (("", "backbone features"), ("_run", "the run")):
            out[f"projection_{method}{who}_cold_s"] = f"projection, {name}, {words}, features cached, first time"
            out[f"projection_{method}{who}_cached_s"] = f"projection, {name}, {words}, cached"
    return out


def section_latency(lat: dict[str, Any]) -> str:
    labels = {
        "first_head_run_s": "first head run (decode, features, head)",
        "show_cached_run_s": "show a cached run (`find_run` + `load_run`)",
        "head_retrain_cold_s": "retrain a head, new head shape (compiles)",
        "head_retrain_warm_s": "retrain a head, same shape (warm model)",
        "head_fit_former_s": "head fit alone, former path (1 step per call, new head compiled)",
        "head_fit_current_first_s": "head fit alone, current path (64 steps per call), first",
        "head_fit_current_warm_s": "head fit alone, current path, warm",
        "head_fit_tfdata_warm_s": "head fit alone with tf.data input (not used: changes the shuffle order)",
        "feature_pass_eager_images_per_s": "feature pass, eager Keras calls (former), images/s",
        "feature_pass_traced_first_images_per_s": "feature pass, traced (current), first incl. trace, images/s",
        "feature_pass_traced_images_per_s": "feature pass, traced (current), images/s",
        "preview_first_s": "augmentation preview, first",
        "preview_redraw_s": "augmentation preview, redraw",
        "load_classifier_s": "load a run's classifier",
        "feature_maps_cold_s": "activation maps, cold Inspector",
        "grad_cam_cold_s": "Grad-CAM, cold",
        "activations_trace_s": "background trace finishing",
        "feature_maps_warm_s": "activation maps, warm",
        "grad_cam_warm_s": "Grad-CAM, warm",
        "first_step_new_arch_s": "first training step, new architecture",
        "repeat_arch_first_step_s": "first training step, architecture already used (warm cache)",
        "repeat_arch_first_step_no_warm_cache_s": "same, warm-model cache off (former behaviour)",
        **_explain_labels(),
    }
    rows = [[label, lat.get(key), lat["targets"].get(key)] for key, label in labels.items() if key in lat]
    return "\n".join(
        [
            "## 4. Interactive latencies (bench/latency.py)",
            "",
            f"Through `core` as the pages call it, in one process, on {lat['dataset']}. Head runs: {lat['head_runs']}. "
            f"Preview: {lat['preview']}. Activations: {lat.get('activations_via')}. First-step runs: "
            f"{lat['first_step_runs_model']}; the figure is the time from calling `train()` to the end of its first "
            "batch.",
            "",
            md_table(["latency", "seconds (or images/s)", "target (s)"], rows),
            "",
            load_line(lat),
        ]
    )


TASK_NAMES = {"0": "0 fine-tune (head, then whole network)", "1": "1 truncate (4 cuts, with and without Dense(1024))",
              "2": "2 small data (50 per class, against the full set)", "3": "3 augmentation grid on the small set",
              "4": "4 regularisation on the small set", "5": "5 search (trials, heads on cached features)"}  # fmt: skip


def _interval(x: dict[str, Any]) -> str:
    return "–" if x.get("low") is None else f"{x['low']:.3f}–{x['high']:.3f}"


def _claim(c: dict[str, Any]) -> str:
    if c.get("diff") is None:
        return f"- {c['claim']}: **{c['verdict']}**."
    return (f"- {c['claim']}: **{c['verdict']}** ({c['measure']} {c['diff']:+.3f}, 95% interval {c['low']:+.3f} to "
            f"{c['high']:+.3f}).")  # fmt: skip


def _reproduce_mode(mode: str, f: dict[str, Any]) -> list[str]:
    tasks = [[TASK_NAMES.get(t, t), s] for t, s in f["task_seconds"].items()]
    table = [[x["task"], x["setting"], x["study"], x["ours"], _interval(x), x["val"],
              f"`{x['run_id']}`" if x["run_id"] else "–"] for x in f["rows"]]  # fmt: skip
    words = {"quick": "heads on the frozen backbone; task 0 fine-tunes the whole network for 2 epochs",
             "faithful": "every row fine-tuned as the study did: the head, then the last block on cached prefix "
                         "activations (augmented rows on per-epoch banks of them)"}  # fmt: skip
    return [
        f"### {mode.capitalize()} mode ({words.get(mode, mode)})",
        "",
        f"{f['runs_trained']} runs{' plus the search' if f.get('trials') else ''} in **{f['first_s']} s**; the same "
        "command again in a fresh process: "
        f"**{f['second_s']} s**, {f['second_trained']} runs trained, every row cached: {f['all_cached_second']}. "
        "What each task cost (a run two tasks share is counted for the first):",
        "",
        md_table(["task", "seconds"], tasks),
        "",
        md_table(["task", "setting", "study", "ours (test)", "95% interval", "val", "run"], table),
        "",
        *[_claim(c) for c in f.get("claims", [])],
        "",
    ]


def section_reproduce(r: dict[str, Any]) -> str:
    modes = r.get("modes") or {"quick": r}
    ratio = r.get("faithful_over_quick")
    return "\n".join(
        [
            "## The whole study reproduced (bench/reproduce.py)",
            "",
            f"`python -m core reproduce` on {r['dataset']} with {r['backbone']} ImageNet at {r['image_size']} px, "
            f"{r['trials']} search trials, {r.get('repeats', 1)} seed(s) per row, from an empty artifacts folder, each "
            f"mode after the other in one run ({r['import_s']} s importing TensorFlow first). The study's figure was "
            "selected on its test folder; ours is test accuracy, the runs selected on a validation split; the interval "
            "is 95% (seeds and the test set's size)."
            + (f" The faithful mode took **{ratio}x** the quick one's time." if ratio else ""),
            "",
            *[line for mode, f in modes.items() for line in _reproduce_mode(mode, f)],
            load_line(r),
        ]
    )


def section_repeats(r: dict[str, Any]) -> str:
    f = r["modes"]["faithful"]
    return "\n".join(
        [
            "## The study with seeds: tasks 0-4 fine-tuned, several seeds per row (bench/repeats.py)",
            "",
            f"`python -m core reproduce --mode faithful --repeats {f['repeats']} --trials 0` on {f['dataset']} with "
            f"{f['backbone']} ImageNet at {f['image_size']} px from an empty artifacts folder ({r['import_s']} s "
            "importing TensorFlow first): every row's run with its other seeds, so each figure is a mean with its 95% "
            "interval over seeds and the test set's size.",
            "",
            *_reproduce_mode("faithful", f),
            load_line(r),
        ]
    )


def section_bundled(b: dict[str, Any]) -> str:
    return "\n".join(
        [
            "## First start: the bundled dataset (bench/bundled.py)",
            "",
            f"`core.data.bundled.ensure_bundled` in a fresh artifacts folder: sha256 of the {b['zip_bytes'] / 1e6:.1f} MB zip, "
            f"the safe archive import of {b['images']} images, the validating scan and the rename: **{b['unpack_s']} s** "
            f"(target ≤ {b['targets']['unpack_s']:g} s). Every later call reads the import record: "
            f"{b['second_call_ms']} ms (median; worst {b['second_call_max_ms']} ms), where re-scanning the folder would "
            f"cost {b['rescan_ms']} ms.",
            "",
            load_line(b),
        ]
    )


def section_search(s: dict[str, Any]) -> str:
    rows = [
        [name, a["workers"], a["trials"], a["trials_per_min"], a["mean_trial_s"], a["wall_s"], a["cores_used"],
         a["surplus"], s["overhead_ms_per_trial"].get(name.split("/")[0])]
        for name, a in s["arms"].items()
    ]  # fmt: skip
    speedup = ", ".join(f"{k} {v}x" for k, v in s["speedup_2_workers"].items())
    overhead = ", ".join(f"{k} {v} ms" for k, v in s["overhead_ms_per_trial"].items())
    return "\n".join(
        [
            "## Search: workers and storages (bench/search.py)",
            "",
            f"{s['trials']} trials per arm, heads on cached features ({s['backbone']}, {s['image_size']} px, "
            f"{s['epochs']} epochs, {s['dataset']}), random sampler, no pruning, one seed per trial; each arm a fresh "
            "study and runs folder worked on by real `python -m core tune` processes.",
            "",
            md_table(["storage/workers", "workers", "trials", "trials/min", "s/trial", "wall s", "cores used", "surplus",
                      "storage ms/trial"], rows),  # fmt: skip
            "",
            f"Two workers against one: {speedup}. Storage calls of one trial without training: {overhead}.",
            "",
            s["why"],
            "",
            load_line(s),
        ]
    )


def section_browser(b: dict[str, Any]) -> str:
    """What a student waits for in Chromium (bench/browser.py): targets first, then every step."""
    t, met, run = b["targets"], b["met"], b["run"]
    targets = [
        ["first load (fresh HOME, KERAS_HOME, artifacts)", f"{b['first_load_s']} s", f"≤ {t['first_load_s']:g} s",
         met["first_load_s"]],
        ["slowest page after a switch, warm", f"{b['page_warm_max_s']} s", f"≤ {t['page_warm_s']:g} s", met["page_warm_s"]],
        ["t-SNE in the app, first time (both maps)", f"{b['map_cold_s']['tsne']} s", f"≤ {t['map_tsne_cold_s']:g} s",
         met["map_tsne_cold_s"]],
    ]  # fmt: skip
    pages = [[label, b["pages_cold_s"][label], b["pages_warm_s"].get(label)] for label in b["pages_cold_s"]]
    names = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "occlusion": "occlusion"}
    page6 = [[names.get(m, m), s, b["page6_warm_s"].get(m)] for m, s in b["page6_cold_s"].items()]
    maps = [[m.upper() if m == "pca" else "t-SNE", s, b["map_cached_s"].get(m)] for m, s in b["map_cold_s"].items()]
    preview = ", ".join(f"{s} s" for s in b["preview_s"])
    return "\n".join(
        [
            "## In the browser (bench/browser.py)",
            "",
            f"`streamlit run app.py` headless with a fresh HOME, KERAS_HOME and artifacts folder on {b['dataset']}, a "
            f"head run and its fine-tuned twin trained first through the CLI (`{run.get('head_run_id', '–')}`, "
            f"`{run.get('run_id')}`, EfficientNet-Lite0 ImageNet, "
            f"{run.get('seconds')} s, not timed), driven by headless Chromium (Playwright). A figure is the time from "
            f"the click (or `goto`, or key press) to the moment the app went quiet for good: no \"Running…\" status "
            f"widget for {b['quiet_ms']} ms, the step's result on the page; those {b['quiet_ms']} ms are not counted. "
            "*cold*: the first time in this server (models loaded, Lite0 weights converted, blocks compiled); "
            "*warm*: the same again.",
            "",
            md_table(["figure", "measured", "target", "met"], targets),
            "",
            "Each page after a switch from the one before it in the navigation (seconds):",
            "",
            md_table(["page", "cold", "warm"], pages),
            "",
            "Page 6 (Activations), the run beside the ImageNet backbone, after choosing each method (seconds):",
            "",
            md_table(["method", "cold", "warm"], page6),
            "",
            "The dataset map, both models (PCA on arriving at the page, then t-SNE chosen; seconds):",
            "",
            md_table(["projection", "cold", "cached"], maps),
            "",
            f"Page 3's preview after moving the rotation slider one step (three steps): {preview}.",
            "",
            f"CPU of this run: {b['machine']['cpu']} (family/model {b['machine']['cpu_family_model']}), "
            f"{b['machine']['cores']} cores. " + load_line(b),
        ]
    )


def section_cluster(c: dict[str, Any]) -> str:
    o, one, two = c["overhead"], c["arms"]["1"], c["arms"]["2"]
    arms = [[f"{a['workers']} worker process(es), 1 thread each", a["runs"], a["wall_s"], a["run_seconds_sum"],
             a["cores_used"]] for a in (one, two)]  # fmt: skip
    waits = [[where, seconds] for where, seconds in c["class_wait_s"].items()]
    return "\n".join(
        [
            "## Training on a Dask cluster (bench/cluster.py)",
            "",
            f"{c['dataset']}, {c['backbone']} ImageNet at {c['image_size']} px, the client, the scheduler and every "
            "worker process on this one machine (`distributed.LocalCluster`).",
            "",
            f"**Per-job overhead.** {o['jobs']} heads on cached features asked one after the other: median "
            f"{o['local_job_s']} s per job through the local worker, {o['cluster_job_s']} s through a cluster of one "
            f"worker process. Subtracting each run's own training seconds, the local worker adds {o['local_added_ms']} ms "
            f"a job and the cluster {o['cluster_added_ms']} ms: **{o['overhead_ms']} ms** more per job (submitting, the "
            "scheduler, the worker finding the dataset, the run folder sent home and installed).",
            "",
            f"**The quick reproduction** (grid sample {c['grid_sample']}, no search; every cache cold, TensorFlow "
            "imported in each worker before timing), all its missing runs submitted at once:",
            "",
            md_table(["cluster", "runs", "wall s", "sum of the runs' own s", "cores used (workers + client)"], arms),
            "",
            f"Two worker processes against one: {c['speedup_2_workers']}x, a parallel efficiency of "
            f"**{c['parallel_efficiency']}** on 2 cores (each TensorFlow process already uses both cores; the sum of "
            "the runs' own seconds shows how much each run slowed down beside the other). With other processes on "
            f"{c['load']['others_cores_mean']} of the 2 cores, the arms had about "
            f"{max(0.0, 2 - c['load']['others_cores_mean']):.1f} cores between them: a second worker process helps "
            "only where there are idle cores for it (another machine, or a bigger one).",
            "",
            f"**A class of {c['class_size']}**, each student asking for one run like the reproduction's mean "
            f"({c['mean_run_s']} s on one worker process), derived from these figures: the last student waits",
            "",
            md_table(["where the runs train", "s until the last run is stored"], waits),
            "",
            "(N machines: ceil(20 / N) runs one after the other on each, every run plus the measured overhead; it "
            "assumes each machine is as fast as this one and the dataset already cached there.)",
            "",
            load_line(c),
        ]
    )


@dataclass(frozen=True)
class Section:
    """One benchmark in the report: ``bench/results/<name>.json``, its section, its rows of the targets table."""

    name: str
    title: str  # how the machine list names the section
    render: Callable[[dict[str, Any]], str]
    targets: Callable[[dict[str, Any]], list[Row]] = lambda fig: []


#: The report's sections in order (a new benchmark adds one entry here).
SECTIONS: list[Section] = [
    Section("reproduce", "the whole study reproduced", section_reproduce, targets_reproduce),
    Section("repeats", "the study with seeds", section_repeats, targets_repeats),
    Section("bundled", "first start", section_bundled, targets_bundled),
    Section("pipeline", "1. input pipeline", section_pipeline, targets_pipeline),
    Section("train_step", "2. training step", section_train_step, targets_train_step),
    Section("time_to_accuracy", "3. time to accuracy", section_tta, targets_tta),
    Section("latency", "4. interactive latencies", section_latency, targets_latency),
    Section("search", "search", section_search),
    Section("aug_finetune", "augmented partial fine-tuning",
            lambda f: aug_finetune.section(f, md_table, load_line), aug_finetune.target_rows),
    Section("browser", "in the browser", section_browser),
    Section("startup", "answers from the store", lambda f: startup.section(f, md_table, load_line), startup.target_rows),
    Section("scale", "a big folder", lambda f: scale.section(f, md_table, load_line), scale.target_rows),
    Section("cluster", "training on a Dask cluster", section_cluster),
    Section("best", "the best model in a budget", lambda f: best_bench.section(f, md_table, load_line),
            best_bench.target_rows),
]


def report(results: Path) -> str:
    """BENCHMARKS.md's text for the results folder ``results``."""
    figs = load(results)
    if not figs:
        raise SystemExit(f"No results in {results}; run bash bench/run_all.sh first.")
    parts = [
        "# Benchmarks",
        "",
        "Regenerate everything with `bash bench/run_all.sh` (it runs each `python -m bench.<name>`, keeps its output "
        "in `bench/results/`, then writes this file with `python -m bench.report bench/results`). Each benchmark also "
        "has a `--tiny` mode (seconds, generated data) that CI runs through `tests/test_bench.py`.",
        "",
        section_machine(figs),
        "",
        summary(figs),
    ]
    parts += [text for section in SECTIONS if section.name in figs for text in ("", section.render(figs[section.name]))]
    notes = results / "NOTES.md"
    if notes.exists():
        parts += ["", notes.read_text().strip()]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    print(report(Path(argv[0] if argv else Path(__file__).parent / "results")), end="")


if __name__ == "__main__":
    main()
