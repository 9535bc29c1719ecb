"""The landmark browser in a real browser: JupyterLab + Debian Chromium driven by Playwright (marker ``browser``).

The test writes a notebook that builds a small synthetic tree's browser, opens it in JupyterLab (127.0.0.1, free
port, random token, kernel = this venv's Python), runs all cells from the Run menu, waits for the widget's image,
moves the image slider with the keyboard and checks that the picture's bytes and the kernel-side label changed,
then uploads a JPEG and a text file through the try-your-own-image widget's file input and reads its messages.
Screenshots land in the test's tmp_path. Skipped only where /usr/bin/chromium or playwright is missing
(``.ci/run`` installs Chromium with apt; never ``playwright install``). The server (with its kernels) and the
browser are stopped on the way out by their context managers, whatever happens.
"""

import time

import pytest
from PIL import Image

from vfu_nb import browser as B
from vfu_nb import synthetic

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def skip_reason():
    if B.chromium_path() is None:
        return f"{B.CHROMIUM} not found (apt-get install -y chromium)"
    return B.playwright_missing()


def test_landmark_browser_in_jupyterlab(tmp_path):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    start = time.monotonic()
    data = tmp_path / "synthetic"
    synthetic.generate(data, n=48, seed=4, workers=1, progress=False)
    root = tmp_path / "lab"
    root.mkdir()
    B.write_notebook(root / "browser.ipynb", [
        "from vfu_nb.data import DeepFashionC\n"
        "from vfu_nb.widgets import landmark_browser\n"
        f"browser = landmark_browser(DeepFashionC({str(data)!r}, 'train', image_size=32))\n"
        "browser",
        "from vfu_nb.models import build_model\n"
        "from vfu_nb.widgets import predict_image\n"
        "ann = browser.annotations\n"
        "model = build_model('mtl', len(ann.category_names), len(ann.attribute_names), image_size=32, width=0.125)\n"
        "uploader = predict_image(model, ann)\n"
        "uploader",
    ])
    photo = tmp_path / "my dress.jpg"
    Image.open(next((data / "img").rglob("*.jpg"))).save(photo, quality=90)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image\n")
    timings = {}
    with B.JupyterLab(root) as lab, B.chromium_page(1400, 1100) as page:
        timings["server"] = time.monotonic() - start
        B.run_all(page, lab, "browser.ipynb")
        img = B.wait_for_widget_image(page, timeout_s=240)
        timings["widget shown"] = time.monotonic() - start
        label = page.locator(".widget-html", has_text="train image")
        assert "train image 1 of" in label.inner_text(timeout=30_000)
        before = B.image_digest(img)

        slider = page.locator(".widget-slider").filter(has=page.locator("label", has_text="image")).first
        slider.locator(".noUi-handle").focus()
        page.keyboard.press("ArrowRight")
        moved = B.wait_for_new_image(img, before, timeout_s=60)
        page.wait_for_function("() => document.body.innerText.includes('train image 2 of')", timeout=30_000)
        assert slider.locator(".widget-readout").inner_text().strip() == "1"
        timings["slider moved"] = time.monotonic() - start

        page.get_by_role("button", name="next").click()
        B.wait_for_new_image(img, moved, timeout_s=60)
        page.wait_for_function("() => document.body.innerText.includes('train image 3 of')", timeout=30_000)
        B.widget_output(img).screenshot(path=str(tmp_path / "landmark_browser.png"))

        # try-your-own-image: a real upload through the browser's file input (ipywidgets 8's value format)
        shown = B.wait_for_widget_image(page, timeout_s=120, index=1)
        placeholder = B.image_digest(shown)
        button = page.locator("button.widget-upload").first

        def upload(path):        # ipywidgets 8 opens a detached <input type=file>: answer its file chooser
            with page.expect_file_chooser(timeout=30_000) as chooser:
                button.click()
            chooser.value.set_files(str(path))

        upload(photo)
        B.wait_for_new_image(shown, placeholder, timeout_s=60)
        page.wait_for_function("() => document.body.innerText.includes('my dress.jpg: whole image')",
                               timeout=30_000)
        B.widget_output(shown).screenshot(path=str(tmp_path / "predict_image_jpeg.png"))
        upload(not_an_image)
        page.wait_for_function("() => document.body.innerText.includes('notes.txt: not an image')",
                               timeout=30_000)
        timings["uploads"] = time.monotonic() - start
        assert not B.notebook_errors(page)
        B.widget_output(shown).scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "predict_image.png"))
    timings["total"] = time.monotonic() - start
    (tmp_path / "timings.txt").write_text("".join(f"{k}: {v:.1f} s\n" for k, v in timings.items()))
    print("browser test timings:", {k: round(v, 1) for k, v in timings.items()}, "screenshot:", tmp_path)
