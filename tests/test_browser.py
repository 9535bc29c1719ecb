"""The widgets in a real browser: JupyterLab + Debian Chromium driven by pytest-playwright (markers browser, slow).

The test writes a notebook that builds the landmark browser on the session's synthetic tree, opens it in
JupyterLab (127.0.0.1, free port, random token, kernel = this venv's Python, the project's
``jupyter_server_config.py``), runs all cells from the Run menu, waits for the widget's image, moves the image
slider with the keyboard and checks that the picture's bytes and the kernel-side label changed. Then it uploads,
through the try-your-own-image widget's file input, a JPEG, a text file and a file over the widget's size limit
(and over tornado's default websocket limit, which the project's config raises) and reads the widget's messages.
A second test runs notebook 05 and checks its rendered Markdown and that no Jupyter-news prompt appears (the
project's config turns it off; a third test, the control, sees the prompt on a server without that config).

The browser is ``/usr/bin/chromium`` (``.ci/run`` installs it with apt; ``playwright install`` is never run);
pytest-playwright keeps a trace and a screenshot of a failing run (``--tracing``/``--screenshot`` in
pyproject.toml, under ``runs/playwright/``). Skipped only where Chromium or Playwright is missing. The server
(with its kernels) is stopped on the way out by its context manager, whatever happens.
"""

import time

import pytest
from PIL import Image

import browser as B
from vfu_nb.widgets import MAX_UPLOAD_BYTES

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(B.chromium_path() is None, reason=f"{B.CHROMIUM} not found (apt-get install -y chromium)"),
    pytest.mark.skipif(B.playwright_missing() is not None, reason=str(B.playwright_missing())),
]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright launches Debian's Chromium, with its background networking off."""
    return {**browser_type_launch_args, "executable_path": B.CHROMIUM, "args": B.CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1100}}


def test_widgets_in_jupyterlab(page, synth_root, tmp_path):
    start = time.monotonic()
    page.set_default_timeout(60_000)
    root = tmp_path / "lab"
    root.mkdir()
    B.write_notebook(root / "browser.ipynb", [
        "from vfu_nb.data.dataset import DeepFashionC\n"
        "from vfu_nb.widgets import landmark_browser\n"
        f"browser = landmark_browser(DeepFashionC({str(synth_root)!r}, 'train', image_size=32))\n"
        "browser",
        "from vfu_nb.models import build_model\n"
        "from vfu_nb.widgets import predict_image\n"
        "ann = browser.annotations\n"
        "model = build_model('mtl', len(ann.category_names), len(ann.attribute_names), image_size=32, width=0.125)\n"
        "uploader = predict_image(model, ann)\n"
        "uploader",
    ])
    photo = tmp_path / "my dress.jpg"
    Image.open(next((synth_root / "img").rglob("*.jpg"))).save(photo, quality=90)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image\n")
    too_large = tmp_path / "huge.jpg"            # over the widget's limit and over tornado's default 10 MiB
    too_large.write_bytes(b"\xff\xd8" + bytes(12 * 2**20))
    timings = {}
    with B.JupyterLab(root) as lab:
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

        # try-your-own-image: real uploads through the browser's file input (ipywidgets 8's value format)
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
        upload(too_large)
        limit = f"huge.jpg: file is 12.0 MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB"
        page.wait_for_function(f"() => document.body.innerText.includes({limit!r})", timeout=60_000)
        timings["uploads"] = time.monotonic() - start
        assert not B.notebook_errors(page)
        B.widget_output(shown).scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "predict_image.png"))
    timings["total"] = time.monotonic() - start
    (tmp_path / "timings.txt").write_text("".join(f"{k}: {v:.1f} s\n" for k, v in timings.items()))
    print("browser test timings:", {k: round(v, 1) for k, v in timings.items()}, "screenshots:", tmp_path)


def test_notebook_05_renders_its_prose_as_markdown_and_lab_asks_no_news_question(page, tmp_path):
    """The project's config turns JupyterLab's first-visit news prompt off; notebook 05's generated sentences are
    rendered Markdown (model names as code), with no raw backticks anywhere in its outputs."""
    import shutil

    page.set_default_timeout(60_000)
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(B.REPO / "notebooks" / "05_controls_and_seeds.ipynb", root / "05.ipynb")
    from vfu_nb.study import report

    study = report.load_study(B.REPO / "results" / "plan.yaml")              # what the notebook shows
    first = report.reading(study)[0].replace("`", "")                      # as rendered: code without backticks
    dial = report.dial_name(study["dial"][-1])
    with B.JupyterLab(root) as lab:
        B.run_all(page, lab, "05.ipynb")
        assert not B.news_prompt_shown(page), "JupyterLab asked about Jupyter news despite the project's config"
        reading = page.locator(".jp-OutputArea-output.jp-RenderedMarkdown", has_text=first).first
        reading.wait_for(state="visible", timeout=300_000)
        assert reading.locator("code", has_text="mtl").count() >= 1           # `mtl` rendered as code
        page.locator(".jp-RenderedMarkdown strong", has_text=dial).first.wait_for(state="visible", timeout=300_000)
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        assert outputs and not [t for t in outputs if "`" in t], "raw Markdown backticks in an output"
        assert not B.notebook_errors(page)


def test_without_the_project_config_jupyterlab_asks_about_news(page, tmp_path):
    """The control of the check above: a server without the project's config shows the prompt on a first visit."""
    page.set_default_timeout(60_000)
    root = tmp_path / "lab"
    root.mkdir()
    B.write_notebook(root / "empty.ipynb", ["1 + 1"])
    with B.JupyterLab(root, config=None) as lab:
        page.goto(lab.url("lab/tree/empty.ipynb"), wait_until="domcontentloaded")
        assert B.news_prompt_shown(page, wait_s=60)
