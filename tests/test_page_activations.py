"""AppTest of pages/activations.py on a tiny trained run, and the upload decoding it uses."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.data.arrays import ImageDecodeError
from core.data.decode import decode_upload
from core.errors import SceneLabError
from core.explain.heatmaps import METHODS
from core.store.folders import Store
from core.training.train import train

PAGE = Path(__file__).resolve().parent.parent / "pages" / "activations.py"
TINY = RunConfig(
    backbone="densenet121",
    weights="none",
    remove_blocks=3,
    image_size=32,
    epochs=1,
    batch_size=8,
    val_fraction=0.25,
)


@pytest.fixture(scope="module")
def lite_run(tiny_dataset, tmp_path_factory):
    """(artifacts folder, fine-tuned run id, head-only run id): tiny EfficientNet-Lite0 runs from ImageNet weights,
    the same settings with and without fine-tuning."""
    store = Store(tmp_path_factory.mktemp("act-lite") / "artifacts")
    cfg = RunConfig(backbone="efficientnet_lite0", weights="imagenet", phase="head", image_size=32, epochs=1,
                    batch_size=8, val_fraction=0.25)  # fmt: skip
    head = train(cfg, tiny_dataset, store).run_id
    tuned = train(cfg.replace(phase="head+full", full_epochs=1), tiny_dataset, store).run_id
    return store.root, tuned, head


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """(artifacts folder, run id) of one tiny run, trained once for this module."""
    store = Store(tmp_path_factory.mktemp("act") / "artifacts")
    result = train(TINY, tiny_dataset, store)
    return store.root, result.run_id


def _page(artifacts: Path, data_root: Path) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=120)
    at.session_state["artifacts"] = str(artifacts)
    at.session_state["data_root"] = str(data_root)
    at.session_state["backbone"] = "densenet121"
    at.session_state["weights"] = "none"
    at.session_state["image_size"] = 32
    return at


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def _images(at: AppTest) -> str:
    return " | ".join(c for img in at.image for c in img.captions)


def test_page_shows_prediction_channels_and_each_method(trained, tiny_dataset):
    artifacts, run_id = trained
    at = _page(artifacts, tiny_dataset).run()
    assert not at.exception, at.exception
    at.selectbox(key="act_model").select(run_id).run()
    assert at.selectbox(key="act_class").value == "coast"
    at.selectbox(key="act_class").select("forest").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert Path(at.selectbox(key="act_image").value).name == "forest_0.jpg"

    text = _text(at)
    predicted = [m.value for m in at.markdown if str(m.value).startswith("Predicted: **")]
    assert len(predicted) == 1
    assert any(f"**{c}**" in predicted[0] for c in ("coast", "forest", "street"))
    assert "%" in predicted[0]
    assert run_id in text and "32 px" in text and "DenseNet121" in text  # the display name, not the registry key
    assert "started from none weights" in text  # a random-init run, never fine-tuned: nothing to compare
    # the block list opens on the deepest block with an 8x8 map (the last one, 4x4, is coarser) and says sizes
    layer = at.selectbox(key="act_layer")
    assert layer.value == "conv2_block6_concat" and layer.options[-1] == "End of block 2 (downsampled) · 4×4"
    assert "Block 2, unit 6 (`conv2_block6_concat`): 8×8 cells of 256 channels at 32 px." in text
    cam_class = at.selectbox(key="act_cam_class")
    assert cam_class.value == -1 and cam_class.options[:2] == ["the predicted class", "coast"]
    # the photo, the heatmap, two legend strips' worth of colour bar and the channel grid
    captions = _images(at)
    assert "most active of 256 channels of conv2_block6_concat (8×8)" in captions
    assert "Where the evidence for" in captions
    assert len(at.get("vega_lite_chart")) == 1  # the probability bars

    for method in ("gradcam++", "scorecam", "occlusion", "gradcam"):
        at.radio(key="act_method").set_value(method).run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        assert any(str(m.value) == f"**{METHODS[method]}**" for m in at.markdown), method

    # another block and a chosen class
    at.selectbox(key="act_layer").select("conv2_block2_concat").run()
    at.selectbox(key="act_cam_class").select(2).run()
    assert not at.exception, at.exception
    captions = _images(at)
    assert "of 128 channels of conv2_block2_concat (8×8)" in captions
    assert "evidence for street (chosen class)" in captions


def test_page_compares_the_fine_tuned_run_with_its_head_only_twin(lite_run, tiny_dataset):
    artifacts, tuned, head = lite_run
    at = _page(artifacts, tiny_dataset)
    at.session_state["backbone"] = "efficientnet_lite0"
    at.session_state["weights"] = "imagenet"
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    model = at.selectbox(key="act_model")
    assert model.value == tuned  # the page opens on the pair, whichever run scored best on test
    assert "head only, backbone frozen" in ux_label(at, head) and "validation " in ux_label(at, head)
    assert at.toggle(key="act_compare").value is True
    headers = [str(m.value) for m in at.markdown]
    for title in ("**Before: head only, backbone frozen**", "**After: fine-tuned (head, then the whole network)**",
                  "**What fine-tuning changed**"):  # fmt: skip
        assert title in headers, headers
    captions = [c for img in at.image for c in img.captions]
    before = next(c for c in captions if c.startswith("Grad-CAM of "))
    explained = before.split(" of ")[1].split(" (")[0]
    assert explained in ("coast", "forest", "street")  # a scene class, not an ImageNet one
    assert f"After − before, both for {explained}" in " | ".join(captions)
    assert len(at.get("vega_lite_chart")) == 2  # both runs' classes
    assert at.selectbox(key="act_layer").value == "block2b_add"  # block5c_add is 2x2 at 32 px: the deepest 8x8
    at.radio(key="act_method").set_value("occlusion").run()
    assert not at.exception and not at.error
    at.toggle(key="act_compare").set_value(False).run()
    assert "**What fine-tuning changed**" not in [str(m.value) for m in at.markdown]
    at.selectbox(key="act_model").select(head).run()
    assert f"Its fine-tuned twin is run `{tuned}`" in _text(at)


def ux_label(at: AppTest, run_id: str) -> str:
    return next(o for o in at.selectbox(key="act_model").options if o.endswith(run_id))


def test_imagenet_view_names_the_coffee_photo_at_its_weights_size(tmp_path, tiny_dataset):
    from skimage import data

    at = _page(tmp_path / "empty", tiny_dataset)
    at.session_state["backbone"] = "efficientnet_lite0"
    at.session_state["weights"] = "imagenet"
    at.session_state["image_size"] = 64  # the sidebar's training size; the ImageNet view is not drawn at it
    at.run()
    assert at.selectbox(key="act_model").value == "imagenet"
    at.radio(key="act_source").set_value("Upload a photo").run()
    at.file_uploader(key="act_upload").upload("coffee.png", _png(data.coffee()), "image/png").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    predicted = next(str(m.value) for m in at.markdown if str(m.value).startswith("Predicted: **"))
    assert predicted.split("**")[1] in ("espresso", "cup", "coffee mug"), predicted
    assert "**224 px**, the size its ImageNet weights were trained at" in _text(at)


def test_page_upload_good_and_bad(trained, tiny_dataset):
    artifacts, run_id = trained
    at = _page(artifacts, tiny_dataset).run()
    at.selectbox(key="act_model").select(run_id).run()
    at.radio(key="act_source").set_value("Upload a photo").run()
    assert not at.exception, at.exception
    assert any("upload a photo" in i.value.lower() for i in at.info)

    at.file_uploader(key="act_upload").upload("notes.jpg", b"this is not a picture", "image/jpeg").run()
    assert not at.exception, at.exception
    assert len(at.error) == 1
    assert "notes.jpg could not be used as an image" in at.error[0].value
    assert not at.info  # the error says it all
    assert "Traceback" not in at.error[0].value

    rgb = np.zeros((300, 200, 3), np.uint8)
    rgb[:, :, 2] = 200
    at.file_uploader(key="act_upload").upload("sea.png", _png(rgb), "image/png").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any(str(m.value).startswith("Predicted: **") for m in at.markdown)
    assert len(at.image) == 4  # the photo, its heatmap, the legend's colour strip, the channel grid

    at.radio(key="act_source").set_value("Camera").run()  # the third source: a photo from the camera
    assert not at.exception, at.exception
    assert any("take one with the camera" in i.value for i in at.info)


def test_page_without_runs_offers_imagenet_and_says_why_not(tmp_path, tiny_dataset, monkeypatch):
    from core.errors import WeightsError

    def missing(*args, **kwargs):
        raise WeightsError("DenseNet121 ImageNet weights are not cached; choose efficientnet_lite0.")

    monkeypatch.setattr("core.explain.activations.resolve_weights", missing)
    at = _page(tmp_path / "empty", tiny_dataset).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="act_model").value == "imagenet"
    assert any("No trained runs" in c.value for c in at.caption)
    assert len(at.error) == 1 and "not cached" in at.error[0].value


def test_page_bare_imagenet_backbone_shows_feature_maps_only(tmp_path, tiny_dataset, monkeypatch):
    from core.models.backbones import ResolvedWeights

    # stand-in for cached DenseNet121 ImageNet weights: the same path with a random initialisation
    monkeypatch.setattr("core.explain.activations.resolve_weights", lambda b, w: ResolvedWeights("imagenet", None, "fake"))
    at = _page(tmp_path / "empty", tiny_dataset)
    at.session_state["image_size"] = 48  # the sidebar's training size: the ImageNet view is at its weights' 224 px
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("feature maps only" in i.value for i in at.info)
    assert at.selectbox(key="act_layer").value == "conv4_block5_concat"  # the study's block: 14x14 at 224 px
    assert "**224 px**" in _text(at)
    at.selectbox(key="act_layer").select("relu").run()
    assert "whatever the class" in _images(at)  # where the block fires instead of a class's evidence
    assert at.radio(key="act_method").value == "gradcam"
    assert not [m for m in at.markdown if str(m.value).startswith("Predicted:")]
    assert any("of 1024 channels of relu" in c for img in at.image for c in img.captions)


def test_decode_upload_refuses_non_images_corrupt_and_huge_files():
    ok = decode_upload(_png(np.full((50, 80, 3), 90, np.uint8)), 32)
    assert ok.shape == (32, 32, 3) and ok.dtype == np.uint8

    with pytest.raises(ImageDecodeError, match="could not be used as an image") as info:
        decode_upload(b"%PDF-1.4 not an image", 32)
    assert isinstance(info.value, SceneLabError)
    assert "\n" not in str(info.value)

    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="JPEG")
    with pytest.raises(ImageDecodeError, match="could not be used as an image"):
        decode_upload(buf.getvalue()[:200], 32)  # truncated JPEG

    buf = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buf, format="PNG")  # 48 megapixels, a few kB on disk
    with pytest.raises(ImageDecodeError, match="megapixel") as info:
        decode_upload(buf.getvalue(), 32, name="The file big.png")
    assert str(info.value).startswith("The file big.png could not be used as an image")


def _gallery_script() -> None:
    from pathlib import Path

    import numpy as np
    import streamlit as st

    from core.store.folders import Store
    from ui.gallery import mistakes_gallery

    record = Store(st.session_state["artifacts"]).load_run(st.session_state["run_id"])
    mistakes_gallery(record, np.arange(4), Path(st.session_state["data_root"]), key="t")


def test_gallery_overlays_the_predicted_class_heatmap(trained, tiny_dataset):
    artifacts, run_id = trained
    at = AppTest.from_function(_gallery_script, default_timeout=120)
    at.session_state["artifacts"], at.session_state["run_id"] = str(artifacts), run_id
    at.session_state["data_root"] = str(tiny_dataset)
    at.run()
    assert not at.exception, at.exception
    plain = [img.value[0] for img in at.image]
    assert len(plain) == 4 and not any("evidence for" in c for img in at.image for c in img.captions)
    at.toggle(key="t_gallery_maps").set_value(True).run()
    assert not at.exception, at.exception
    captions = [c for img in at.image for c in img.captions]
    assert len(captions) == 4 and all("— evidence for " in c for c in captions), captions
    assert [img.value[0] for img in at.image] != plain  # the overlays are other pictures


def test_dataset_map_shows_both_maps_and_a_picked_image(trained, tiny_dataset):
    artifacts, run_id = trained
    at = AppTest.from_file(str(PAGE.parent / "dataset_map.py"), default_timeout=120)
    for k, v in {"artifacts": str(artifacts), "data_root": str(tiny_dataset), "backbone": "densenet121",
                 "weights": "none", "image_size": 32, "seed": 0, "tta": False}.items():  # fmt: skip
        at.session_state[k] = v
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="map_run").value == run_id
    assert len(at.get("vega_lite_chart")) == 2
    text = _text(at)
    assert "PCA of the pooled features (none weights, not fine-tuned) of 33 images" in text
    assert "class scores of the trained head" in text and "test mistakes" in text
    at.radio(key="map_method").set_value("tsne").run()
    assert not at.exception and len(at.get("vega_lite_chart")) == 2
    at.session_state["map_selected"] = "test/forest/forest_1.jpg"  # what a click on a point sets
    at.run()
    assert any("**forest_1.jpg** · test image · true class **forest**" in str(m.value) for m in at.markdown)
