"""One AppTest per page: what each page shows on a tiny generated dataset with a tiny DenseNet121.

The pages run through app.py (the router) with the shared session keys set the way the sidebar sets
them. Runs are trained into a temporary artifacts folder, so nothing here touches ./artifacts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.store.folders import Store
from core.training.train import train
from tests.apphelpers import metrics, texts

REPO = Path(__file__).resolve().parent.parent
# the tiny run of tests/test_train.py; the pages reach it through their "loaded extras"
TINY = RunConfig(
    backbone="densenet121", weights="none", remove_blocks=3, image_size=32, epochs=2, batch_size=8, val_fraction=0.25
)
TINY_EXTRAS = {"remove_blocks": 3, "val_fraction": 0.25, "batch_size": 8}


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """An artifacts folder holding the tiny head run."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    record = train(TINY, tiny_dataset, Store(artifacts)).record
    return artifacts, record


def open_page(page: str | None, data_root, artifacts, **state) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    at.session_state["data_root"] = str(data_root)
    at.session_state["backbone"] = "densenet121"
    at.session_state["weights"] = "none"
    at.session_state["image_size"] = 32
    at.session_state["seed"] = 0
    at.session_state["artifacts"] = str(artifacts)
    for key, value in state.items():
        at.session_state[key] = value
    if page is not None:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def wait_for(at: AppTest, done, timeout: float = 90.0) -> AppTest:
    """Rerun the page (as its polling fragment would) until ``done(at)``."""
    deadline = time.monotonic() + timeout
    while not done(at):
        assert time.monotonic() < deadline, "the page never showed the finished run"
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def test_first_screen_says_what_to_put_where(tmp_path):
    at = open_page(None, tmp_path / "nowhere", tmp_path / "artifacts")
    assert any("does not exist" in e.value for e in at.error)
    assert any(s.value == "Point SceneLab at a dataset" for s in at.subheader)
    code = "\n".join(c.value for c in at.code)
    assert "<root>/train/<class>/*.jpg" in code and "python -m core download-data --to data/mit8" in code
    assert not at.metric  # nothing else is drawn


def test_sidebar_reports_the_dataset(tiny_dataset, tmp_path):
    at = open_page(None, tiny_dataset, tmp_path / "artifacts")
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    assert "3 classes · 24 train · 9 test images" in sidebar
    assert at.sidebar.selectbox(key="_w_backbone").value == "densenet121"
    assert at.sidebar.radio(key="_w_weights").value == "none"


def test_finetune_trains_in_the_background_then_shows_results(tiny_dataset, tmp_path):
    at = open_page("pages/finetune.py", tiny_dataset, tmp_path / "artifacts", finetune_extra=TINY_EXTRAS)
    assert "Not trained yet" in texts(at)
    at.radio(key="_w_finetune_phase").set_value("head")
    at.number_input(key="_w_finetune_epochs").set_value(2)
    at.button(key="finetune_train").click()
    at.run()
    assert not at.exception
    at = wait_for(at, lambda a: "Test accuracy" in metrics(a))
    m = metrics(at)
    assert m["Epochs"] == "2"
    assert "dataset " + tiny_dataset.name in texts(at)  # the numbers name their dataset and run
    record = Store(tmp_path / "artifacts").list_runs()[0]
    assert float(m["Test accuracy"]) == pytest.approx(record.metrics["test_accuracy"], abs=5e-4)  # the stored run's
    assert f"run `{record.run_id}`" in texts(at)
    assert record.config["run"]["remove_blocks"] == 3 and record.config["run"]["phase"] == "head"


def test_finetune_opens_on_cached_run_and_lists_mistakes(tiny_dataset, trained):
    artifacts, record = trained
    at = open_page(
        "pages/finetune.py",
        tiny_dataset,
        artifacts,
        finetune_extra=TINY_EXTRAS,
        finetune_phase="head",
        finetune_epochs=2,
        finetune_batch_size=8,
    )
    m = metrics(at)
    assert m["Test accuracy"] == f"{record.metrics['test_accuracy']:.3f}"
    assert f"run `{record.run_id}`" in texts(at)
    classes = at.selectbox(key="finetune_true").options
    assert classes == ["coast", "forest", "street"] == at.selectbox(key="finetune_pred").options
    preds = record.predictions()
    wrong = int((preds["probs"].argmax(1) != preds["y_true"]).sum())
    # choose every cell in turn: the images shown are that cell's, most confident first
    shown = 0
    for t in range(3):
        for p in range(3):
            if t == p:
                continue
            at.selectbox(key="finetune_true").set_value(classes[t])
            at.selectbox(key="finetune_pred").set_value(classes[p])
            at.run()
            n = int(((preds["y_true"] == t) & (preds["probs"].argmax(1) == p)).sum())
            assert len(at.image) == n
            if n:
                assert f"{n} **{classes[t]}** test images predicted as **{classes[p]}**" in texts(at)
                confidences = [float(c.split(" ")[1].rstrip("%")) for img in at.image for c in img.captions]
                assert confidences == sorted(confidences, reverse=True)
            shown += n
    assert shown == wrong


def test_truncate_counts_parameters_before_training(tiny_dataset, trained):
    artifacts, record = trained
    at = open_page(
        "pages/truncate.py",
        tiny_dataset,
        artifacts,
        truncate_extra={"val_fraction": 0.25, "batch_size": 8},
        truncate_epochs=2,
    )
    assert metrics(at)["Backbone parameters"] == "7,037,504"
    at.slider(key="_w_truncate_remove_blocks").set_value(2).run()
    assert metrics(at)["Backbone parameters"] == "1,444,928"
    assert "−2 blocks: 1.5M parameters, 0.825" in texts(at)  # the study's figure beside ours
    assert "Test accuracy" not in metrics(at)  # not trained at this cut
    at.slider(key="_w_truncate_remove_blocks").set_value(3).run()
    assert metrics(at)["Test accuracy"] == f"{record.metrics['test_accuracy']:.3f}"
    assert at.get("vega_lite_chart"), "the parameters-against-accuracy chart is missing"


def test_small_data_shows_small_and_full_side_by_side(tiny_dataset, tmp_path):
    artifacts = tmp_path / "artifacts"
    at = open_page("pages/small_data.py", tiny_dataset, artifacts, small_data_extra=TINY_EXTRAS)
    assert [s.value for s in at.subheader][:2] == ["50 images per class", "the full training set"]
    at.slider(key="_w_small_data_train_per_class").set_value(5)
    at.number_input(key="_w_small_data_epochs").set_value(2)
    at.run()
    at.button(key="small_data_train").click().run()
    at = wait_for(at, lambda a: [m.label for m in a.metric].count("Test accuracy") == 2)
    assert [s.value for s in at.subheader][:3] == [
        "5 images per class",
        "the full training set",
        "Learning curves, both runs",
    ]
    runs = {r.config["run"]["train_per_class"]: r for r in Store(artifacts).list_runs()}
    assert set(runs) == {5, None}
    split = next(c.value for c in at.caption if c.value.startswith("Of the 24 images of the training folder"))
    assert f"held out for validation; the full set trains on the other {runs[None].metrics['n_train']}" in split
    assert "overfits" in texts(at)  # one verdict comparing both gaps, not a label on each run
    assert len(at.get("vega_lite_chart")) >= 3  # loss and accuracy (both runs on each), and the sweep


def test_augmentation_preview_follows_the_controls(tiny_dataset, tmp_path):
    at = open_page("pages/augmentation.py", tiny_dataset, tmp_path / "artifacts")
    assert "augmented: zoom 0.2 + horizontal flip" in at.image[1].captions[0]  # the study's setting, on the small set
    assert at.session_state["augmentation_train_per_class"] == 50
    assert "to see whether augmentation helps on this data" in texts(at)  # no runs yet: what to train
    at.toggle(key="_w_augmentation_hflip").set_value(False)
    at.slider(key="_w_augmentation_zoom").set_value(0.0).run()
    original, first = at.image[0].value, at.image[1].value
    assert "unchanged" in at.image[0].captions[0] and "augmented: none" in at.image[1].captions[0]
    at.toggle(key="_w_augmentation_hflip").set_value(True)
    at.slider(key="_w_augmentation_rotation").set_value(90.0).run()
    flipped = at.image[1].value
    assert flipped != first and at.image[0].value == original  # the originals stay beside
    assert "augmented: rotation 90 + horizontal flip" in at.image[1].captions[0]
    at.button(key="augmentation_reshuffle").click().run()
    assert at.image[1].value != flipped  # another draw of the same transformations


def test_augmented_copies_are_a_named_shortcut_on_page_3(tiny_dataset, tmp_path):
    """Off (the study's way) unless asked; asked, the page says so and the run it trains carries the copies in its
    settings and its name."""
    from ui.format import run_name

    artifacts = tmp_path / "artifacts"
    at = open_page("pages/augmentation.py", tiny_dataset, artifacts, augmentation_extra=TINY_EXTRAS, augmentation_epochs=2,
                   augmentation_train_per_class=None)  # fmt: skip
    assert at.number_input(key="_w_augmentation_aug_copies").value == 0 and "Shortcut on" not in texts(at)
    at.number_input(key="_w_augmentation_aug_copies").set_value(1).run()
    assert "Shortcut on: 1 augmented copies cycled over the epochs, not a fresh augmentation each epoch" in texts(at)
    at.button(key="augmentation_train").click().run()
    at = wait_for(at, lambda a: any(m.label == "Test accuracy" for m in a.metric))
    (record,) = Store(artifacts).list_runs()
    assert record.config["run"]["aug_copies"] == 1 and record.config["run"]["augment"]["zoom"] == 0.2
    assert "augmented copies 1" in run_name(record.config["run"])


def test_augmentation_grid_lists_its_runs_against_the_baseline(tiny_dataset, trained):
    artifacts, record = trained
    small = TINY.replace(train_per_class=4)
    base = train(small, tiny_dataset, Store(artifacts)).record
    from core.config import AugmentConfig

    flip = train(small.replace(augment=AugmentConfig(hflip=True)), tiny_dataset, Store(artifacts)).record
    extras = {**TINY_EXTRAS, "train_per_class": 4}
    at = open_page("pages/augmentation.py", tiny_dataset, artifacts, augmentation_extra=extras, augmentation_epochs=2,
                   augmentation_train_per_class=4)  # fmt: skip
    table = at.dataframe[0].value
    assert set(table["run"]) == {base.run_id, flip.run_id}
    row = table[table["run"] == flip.run_id].iloc[0]
    assert row["augmentation"] == "horizontal flip"
    assert row["change"] == pytest.approx(flip.metrics["test_accuracy"] - base.metrics["test_accuracy"])
    diff = round(flip.metrics["test_accuracy"] - base.metrics["test_accuracy"], 3)
    side = "equal to" if diff == 0 else f"{abs(diff):.3f} {'above' if diff > 0 else 'below'}"
    assert (f"On this data the best augmentation is **horizontal flip** (test {flip.metrics['test_accuracy']:.3f}, "
            f"chosen by validation accuracy), {side} no augmentation") in texts(at)  # fmt: skip


def test_regularisation_overlays_the_previous_setting(tiny_dataset, trained):
    artifacts, record = trained
    at = open_page("pages/regularisation.py", tiny_dataset, artifacts, regularisation_extra=TINY_EXTRAS,
                   regularisation_epochs=2, regularisation_train_per_class=None, regularisation_best_aug=False,
                   regularisation_dropout=0.0, regularisation_early_stopping_patience=0,
                   regularisation_reduce_lr_patience=0)  # fmt: skip
    assert metrics(at)["Test accuracy"] == f"{record.metrics['test_accuracy']:.3f}"
    at.slider(key="_w_regularisation_dropout").set_value(0.5).run()
    at.button(key="regularisation_train").click().run()
    at = wait_for(at, lambda a: any(m.label == "Test accuracy" and m.delta for m in a.metric))
    test_metric = next(m for m in at.metric if m.label == "Test accuracy")
    assert test_metric.delta[0] in "+−" and test_metric.proto.delta_description == "vs previous"
    table = at.dataframe[0].value
    assert any("dropout 0.5" in name for name in table["run"]) and len(table) == 2
    assert "On this data the best regulariser is **dropout 0.5** (test " in texts(at)  # its finding, from the runs
    assert "no regulariser (" in texts(at)


def test_regularisation_opens_on_the_studys_setting(tiny_dataset, tmp_path):
    at = open_page("pages/regularisation.py", tiny_dataset, tmp_path / "artifacts")
    assert at.slider(key="_w_regularisation_dropout").value == 0.5
    assert at.number_input(key="_w_regularisation_early_stopping_patience").value == 3
    assert at.number_input(key="_w_regularisation_reduce_lr_patience").value == 2
    assert at.session_state["regularisation_train_per_class"] == 50 and at.session_state["regularisation_best_aug"]
    assert "to see which regulariser helps on this data" in texts(at)
    assert "(6 of 6 not trained yet)" in at.button(key="regularisation_train_study").label
    assert "dropout 0.5, early-stopping patience 3, reduce-LR patience 2" in texts(at)  # the chain's third step


def test_loaded_config_prefills_a_page_and_is_consumed(tiny_dataset, trained):
    artifacts, record = trained
    loaded = TINY.replace(dropout=0.25, image_size=64, seed=3, tta=True).to_dict()
    at = open_page("pages/regularisation.py", tiny_dataset, artifacts, loaded_config=loaded)
    assert "loaded_config" not in at.session_state
    assert at.slider(key="_w_regularisation_dropout").value == 0.25
    assert at.number_input(key="_w_regularisation_epochs").value == 2
    assert at.session_state["image_size"] == 64 and at.session_state["seed"] == 3
    assert at.sidebar.checkbox(key="_w_tta").value is True  # the sidebar's test-time flip follows the run
    assert "Also kept from the loaded run: remove_blocks=3, val_fraction=0.25, batch_size=8." in texts(at)


def test_runs_page_lists_every_stored_run(tiny_dataset, trained):
    artifacts, record = trained
    at = open_page("pages/runs.py", tiny_dataset, artifacts)
    table = at.get("arrow_data_frame")[0].value if at.get("arrow_data_frame") else at.dataframe[0].value
    stored = {r.run_id for r in Store(artifacts).list_runs()}
    assert set(table["run_id"]) == stored and record.run_id in stored
    row = table[table["run_id"] == record.run_id].iloc[0]
    assert row["dataset"] == tiny_dataset.name and row["test_accuracy"] == record.metrics["test_accuracy"]
    assert row["name"] == "1 · head only, blocks removed 3, epochs 2, batch size 8"  # its page, and what differs
    assert at.selectbox(key="runs_dataset").options == ["All datasets", tiny_dataset.name]
    assert row["backbone"] == "DenseNet121" and row["seed"] == 0 and row["trained_by"] == "–"  # display name, no "None"
    assert row["trained"][:1].isdigit() and "T" not in row["trained"] and "+0000" not in row["trained"]


def test_finetune_frozen_blocks_name_their_run_or_one_sentence(tiny_dataset, tmp_path):
    at = open_page("pages/finetune.py", tiny_dataset, tmp_path / "artifacts", finetune_extra=TINY_EXTRAS)
    at.radio(key="_w_finetune_phase").set_value("full")
    at.number_input(key="_w_finetune_freeze_blocks").set_value(1)
    at.run()  # settings apply at once: no form to submit
    assert not at.exception
    assert at.button(key="finetune_train").disabled  # nothing to train with settings that cannot be
    # TINY keeps one dense block (3 removed): it must train, so nothing can stay frozen
    assert any("(--freeze-blocks) must be 0 to 0" in e.value for e in at.error), [e.value for e in at.error]
    assert not Store(tmp_path / "artifacts").list_runs()
    at.radio(key="_w_finetune_phase").set_value("head")  # head only: the frozen-blocks setting does not apply
    at.number_input(key="_w_finetune_epochs").set_value(1)
    at.run()
    assert not at.error and at.number_input(key="_w_finetune_freeze_blocks").disabled
    at.button(key="finetune_train").click()
    at.run()
    at = wait_for(at, lambda a: "Test accuracy" in metrics(a))
    (record,) = Store(tmp_path / "artifacts").list_runs()
    assert record.config["run"]["phase"] == "head" and record.config["run"]["freeze_blocks"] == 0


# -- who is using the app: the owner, the name, the image size ----------------------------------------------
def test_reset_is_for_the_owner_only(tiny_dataset, trained, monkeypatch):
    artifacts, _ = trained
    monkeypatch.delenv("SCENELAB_ADMIN", raising=False)
    reset = "Owner: reset the app"
    at = open_page("pages/runs.py", tiny_dataset, artifacts)  # a browser on this machine: the laptop's user
    assert reset in [e.label for e in at.expander]
    monkeypatch.setattr("ui.settings.client_address", lambda: "10.1.2.3")  # a student's browser, no key set
    at = open_page("pages/runs.py", tiny_dataset, artifacts)
    assert reset not in [e.label for e in at.expander]
    assert at.sidebar.selectbox(key="_w_data_root").options  # datasets by name: no server path to type
    monkeypatch.setenv("SCENELAB_ADMIN", "k3y")  # a class server with a key: only after giving it
    at = open_page("pages/runs.py", tiny_dataset, artifacts)
    assert reset not in [e.label for e in at.expander]
    assert at.sidebar.text_input(key="_admin_key")  # where the owner gives the key
    at = open_page("pages/runs.py", tiny_dataset, artifacts, _admin_ok=True)  # what giving it sets
    assert reset in [e.label for e in at.expander]


def test_user_name_survives_a_reload_through_the_url(tiny_dataset, tmp_path):
    at = open_page("pages/finetune.py", tiny_dataset, tmp_path / "artifacts")
    at.sidebar.text_input(key="_w_user_name").input("Ada").run()
    assert at.query_params["user"] in ("Ada", ["Ada"])
    assert "user=Ada" not in texts(at)  # kept in the URL, not reported as an unusable link value
    again = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)  # a reload: a new session, the same URL
    again.query_params["user"] = "Ada"
    for key, value in {"data_root": str(tiny_dataset), "backbone": "densenet121", "weights": "none", "image_size": 32,
                       "artifacts": str(tmp_path / "artifacts")}.items():  # fmt: skip
        again.session_state[key] = value
    again.run()
    assert not again.exception
    assert again.sidebar.text_input(key="_w_user_name").value == "Ada"


def test_a_queued_run_shows_as_queued_with_train_disabled(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("core.worker.Worker._ensure_thread", lambda self: None)  # nothing ever starts: it stays queued
    at = open_page("pages/finetune.py", tiny_dataset, tmp_path / "artifacts", finetune_extra=TINY_EXTRAS)
    at.button(key="finetune_train").click().run()
    at.run()
    assert not at.exception
    shown = texts(at)
    assert "Queued" in shown and "Not trained yet" not in shown and "Press **Train**" not in shown
    assert at.button(key="finetune_train").disabled
    at.button(key="finetune_cancel").click().run()
    assert "Not trained yet" in texts(at) and not at.button(key="finetune_train").disabled


def test_image_size_defaults_to_128_px_for_small_images_and_says_why(tiny_dataset, tmp_path):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    at.session_state["data_root"] = str(tiny_dataset)  # 32 px images
    at.session_state["artifacts"] = str(tmp_path / "artifacts")
    at.run()
    assert not at.exception
    assert at.session_state["image_size"] == 128
    caption = "\n".join(c.value for c in at.sidebar.caption)
    assert "about 32 px, shown to the network at 128 px" in caption and "upsampled" in caption


def test_every_study_row_link_applies_without_a_warning(tiny_dataset, tmp_path):
    import urllib.parse

    from core.study.plan import study_rows
    from ui.catalog import BY_KEY
    from ui.study import row_link

    base = RunConfig(backbone="densenet121", weights="none", image_size=32)
    links = sorted({row_link(row, row.configs[0]) for row in study_rows(base) if row.configs})
    assert len(links) >= 10
    for link in links:
        path, _, query = link.partition("?")
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
        for key, value in {"data_root": str(tiny_dataset), "artifacts": str(tmp_path / "artifacts")}.items():
            at.session_state[key] = value
        for key, value in urllib.parse.parse_qsl(query):
            at.query_params[key] = value
        at.switch_page(BY_KEY[path.strip("/")].file)
        at.run()
        assert not at.exception, (link, [e.value for e in at.exception])
        assert not [i.value for i in at.info if "could not be used" in i.value], link
        assert at.session_state["image_size"] == 32 and at.session_state["weights"] == "none", link


def test_a_bad_link_to_the_study_page_says_what_was_ignored(tiny_dataset, tmp_path):
    """``/?size=9999&epochs=3``: the Study page names both, keeps its size, and still draws its table."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    for key, value in {"data_root": str(tiny_dataset), "artifacts": str(tmp_path / "artifacts")}.items():
        at.session_state[key] = value
    at.query_params["size"], at.query_params["epochs"], at.query_params["backbone"] = "9999", "3", "densenet121"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (notice,) = [i.value for i in at.info if "could not be used" in i.value]
    assert "size=9999 (Image size (--image-size) must be between 32 and 512 px" in notice
    assert "epochs=3 (this page has no such setting)" in notice and "backbone" not in notice
    assert at.session_state["backbone"] == "densenet121"  # the usable part of the link is applied
    assert at.session_state["image_size"] != 9999 and len(at.dataframe[0].value) == 14
