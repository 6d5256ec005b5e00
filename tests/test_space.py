"""The Gradio Space (space/app.py): the page works in a real headless Chromium, the same endpoint through
`gradio_client`, the Space's requirements resolve in a fresh virtualenv as the Space builder installs them,
the request logic in-process (progress per chunk, limits, errors that hide server paths) and the publish
staging.

The browser and client tests share one server: `python space/app.py` on 127.0.0.1 with the tiny random-weight
checkpoint made by the conversion code, as the Space starts it (model loaded and warmed up before serving).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from modeling_hdemucs_flax import AudioError, OptionError, Separator

from .audio_files import media_that_open_other_files, write_corrupt, write_song, write_understated_matroska
from .conftest import SEGMENT_SECONDS, SOURCES, SR
from .flows import SCRIPTS
from .reference import music_like
from .separation_helpers import CompileCounter
from .space_helpers import OUTSIDE, ROOT, SpaceServer, load_app_module

MAX_DURATION = 10.0  # seconds, for the test server: the 8-second examples fit, a 12-second file does not
MAX_FILE_SIZE = 2_000_000  # bytes, for the test server
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="module")
def app():
    return load_app_module()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint_dir, jax_cache):
    env = {
        "HDEMUCS_MODEL": str(tiny_checkpoint_dir),
        "HDEMUCS_SPACE_SEGMENT": repr(SEGMENT_SECONDS),
        "HDEMUCS_SPACE_MAX_DURATION": str(MAX_DURATION),
        "HDEMUCS_SPACE_MAX_FILE_SIZE": str(MAX_FILE_SIZE),
        "HDEMUCS_SPACE_QUEUE_SIZE": "4",
        "HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache),
    }
    started = time.monotonic()
    with SpaceServer(tmp_path_factory.mktemp("space-server"), env) as running:
        print(f"[space] serving {running.url} after {time.monotonic() - started:.1f} s (log {running.log})")
        yield running


def check_stem(path: Path, frames: int, rate: int, channels: int) -> None:
    info = sf.info(path)
    assert (info.frames, info.samplerate, info.channels) == (frames, rate, channels), (path.name, info)
    audio, _ = sf.read(path, always_2d=True)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0, f"{path.name}: silent or non-finite"


# ---------------------------------------------------------------------------------------------------------
# In-process: the request logic behind the page


@pytest.fixture(scope="module")
def tiny_separator(tiny_checkpoint_dir):
    separator = Separator.from_pretrained(tiny_checkpoint_dir, segment=SEGMENT_SECONDS)
    separator.warmup()
    return separator


def test_with_options_shares_the_compiled_forward_and_matches_a_fresh_separator(tiny_separator, tiny_pair):
    rate = 44100
    song = 0.5 * music_like(20000, 2, seed=3)
    with CompileCounter() as counter:
        variant = tiny_separator.with_options(overlap=0.5, shifts=2, seed=7)
        got = variant.separate(song, rate)
    assert counter.compiles == 0, "with_options compiled the forward pass again"
    assert (tiny_separator.overlap, tiny_separator.shifts) == (0.25, 0), "the original separator was changed"
    fresh = Separator(tiny_pair[2], segment=SEGMENT_SECONDS, overlap=0.5, shifts=2, seed=7)
    want = fresh.separate(song, rate)
    for name in SOURCES:
        np.testing.assert_array_equal(got[name], want[name])
    with pytest.raises(OptionError, match=r"overlap=1.0: must be in \[0, 1\)"):
        tiny_separator.with_options(overlap=1.0)


def test_request_reports_every_chunk_with_time_left_and_zips_the_stems(app, tiny_separator, tmp_path):
    work = app.StemSeparator(tiny_separator, max_duration=MAX_DURATION, workdir=tmp_path / "work")
    song = write_song(tmp_path / "in" / "tune.flac", 1.0, 32000, 1, subtype="PCM_16")
    reports = []
    ticks = iter(range(1000))
    progress = app.chunk_progress(lambda value, desc, unit: reports.append((value, desc, unit)), lambda: next(ticks))
    result = work(str(song), "karaoke", shifts=1, overlap=0.5, ext="flac", progress=progress)

    total = tiny_separator.with_options(overlap=0.5, shifts=1).chunks_total(32000, 32000)
    assert [r[0] for r in reports] == [(done, total) for done in range(total + 1)], "not one report per chunk"
    assert total > 3 and all(r[2] == "chunks" for r in reports)
    # with one clock tick per chunk, the time left after chunk k is exactly total - k seconds
    assert [r[1] for r in reports[1:]] == [f"Separating, about {total - k} s left" for k in range(1, total + 1)]
    assert list(result.stems) == ["vocals", "no_vocals"]
    for path in result.stems.values():
        assert path.suffix == ".flac"
        check_stem(path, 32000, 32000, 1)
    with zipfile.ZipFile(result.archive) as bundle:
        assert sorted(bundle.namelist()) == ["tune_no_vocals.flac", "tune_vocals.flac"]
    assert result.summary.startswith("**tune.flac** (1 s, 32 kHz mono) → 2 stems")


def test_request_errors_are_one_line_and_hide_server_paths(app, tiny_separator, tmp_path):
    work = app.StemSeparator(tiny_separator, max_duration=2.0, workdir=tmp_path / "work")
    uploads = tmp_path / "uploads" / "deep" / "folder"
    long_song = write_song(uploads / "long.wav", 2.5, 8000, 1)
    corrupt = write_corrupt(uploads / "broken.wav")
    empty = uploads / "empty.wav"
    sf.write(empty, np.zeros((0, 2), np.float32), SR)
    text = uploads / "notes.wav"
    text.write_text("not audio at all\n")
    cases = {
        None: "No audio: upload a file or record something first",
        str(long_song): "long.wav: 2.5 s long; this Space separates up to 2 s",
        str(corrupt): "broken.wav: not a readable audio file",
        str(empty): "empty.wav: no audio samples (0 frames)",
        str(text): "notes.wav: not a readable audio file",
    }
    for path, message in cases.items():
        with pytest.raises(AudioError) as caught:
            work(path)
        text_ = str(caught.value)
        assert text_.startswith(message), text_
        assert str(uploads) not in text_ and "\n" not in text_
    # request folders are bounded: only the `keep` most recent survive
    song = write_song(uploads / "ok.wav", 0.3, SR, 2)
    for _ in range(work.keep + 3):
        work(str(song))
    assert len([p for p in work.workdir.iterdir() if p.is_dir()]) == work.keep


def test_format_seconds(app):
    got = [app.format_seconds(s) for s in (0.4, 2.5, 8, 42, 60, 185, 600)]
    assert got == ["0.4 s", "2.5 s", "8 s", "42 s", "1 min", "3 min 05 s", "10 min"]


# ---------------------------------------------------------------------------------------------------------
# The page in a real browser


def launch_chromium(playwright):
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} not found: the browser test needs Debian's chromium (apt-get install -y chromium; "
            "CI's .ci/run installs it). Never `playwright install`."
        )
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ],
    )


def upload(page, path: Path) -> None:
    """Put `path` into the Song input through its hidden file input (clearing a previous song first) and wait
    until the component holds it (its Clear button shows)."""
    from playwright.sync_api import expect

    song = page.locator("#song-input")
    song.locator("input[type=file], button[aria-label=Clear]").first.wait_for(state="attached")
    if song.locator("input[type=file]").count() == 0:
        song.locator("button[aria-label=Clear]").click()
    song.locator("input[type=file]").set_input_files(str(path))
    expect(song.locator("button[aria-label=Clear]")).to_be_visible(timeout=30_000)


def download(page, selector: str, folder: Path) -> Path:
    """Click the download link inside `selector` and save what the browser receives."""
    with page.expect_download(timeout=30_000) as info:
        page.locator(f"{selector} a[download]").first.click()
    target = folder / info.value.suggested_filename
    info.value.save_as(target)
    return target


@pytest.mark.browser
def test_browser_upload_separate_download_error_and_recovery(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    song = write_song(tmp_path / "song.wav", 2.5, 48000, 2, subtype="PCM_16")
    corrupt = write_corrupt(tmp_path / "broken.wav")
    second = write_song(tmp_path / "second.wav", 1.5, 22050, 1, subtype="PCM_16")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    ARTIFACTS.mkdir(exist_ok=True)
    hosts = set()
    started = time.monotonic()

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page.on("request", lambda request: hosts.add(request.url.split("/")[2]))
        page.goto(server.url)
        status = page.locator("#hdemucs-status")
        expect(status).to_contain_text("Stems will appear here", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "space-start.png"), full_page=True)

        # 1. a stereo 48 kHz song into four stems: players, downloads and the zip
        upload(page, song)
        page.click("#separate-button")
        expect(status).to_contain_text("song.wav", timeout=60_000)
        expect(status).to_contain_text("4 stems")
        for stem in SOURCES:
            expect(page.locator(f"#stem-{stem}")).to_be_visible()
            check_stem(download(page, f"#stem-{stem}", downloads), int(2.5 * 48000), 48000, 2)
        expect(page.locator("#stem-no_vocals")).to_be_hidden()
        archive = download(page, "#stems-zip", downloads)
        with zipfile.ZipFile(archive) as bundle:
            assert sorted(bundle.namelist()) == sorted(f"song_{s}.wav" for s in SOURCES)
            bundle.extractall(downloads / "zip")
        for stem in SOURCES:
            check_stem(downloads / "zip" / f"song_{stem}.wav", int(2.5 * 48000), 48000, 2)
        shot = ARTIFACTS / "space-four-stems.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"[space] screenshot of the finished page: {shot}")

        # 2. a corrupt file: a readable message in the page, no stack trace
        upload(page, corrupt)
        page.click("#separate-button")
        toast = page.locator('[data-testid="toast-body"]')
        expect(toast).to_contain_text("broken.wav: not a readable audio file", timeout=30_000)
        assert "Traceback" not in page.content()
        page.screenshot(path=str(ARTIFACTS / "space-error.png"), full_page=True)

        # 3. the app keeps serving: a mono 22.05 kHz file in karaoke mode
        upload(page, second)
        page.locator("#mode").get_by_text("Karaoke").click()
        page.click("#separate-button")
        expect(status).to_contain_text("second.wav", timeout=60_000)
        expect(status).to_contain_text("2 stems")
        for stem in ("vocals", "no_vocals"):
            expect(page.locator(f"#stem-{stem}")).to_be_visible()
            check_stem(download(page, f"#stem-{stem}", downloads), int(1.5 * 22050), 22050, 1)
        for stem in ("drums", "bass", "other"):
            expect(page.locator(f"#stem-{stem}")).to_be_hidden()
        page.screenshot(path=str(ARTIFACTS / "space-karaoke.png"), full_page=True)

        # 4. an example clip, separated on first use (lazy cache)
        page.get_by_text("synth_pop.ogg").click()
        expect(status).to_contain_text("synth_pop.ogg", timeout=60_000)
        expect(page.locator("#stem-drums")).to_be_visible()
        browser.close()

    assert hosts == {f"127.0.0.1:{server.port}"}, f"the page fetched from other hosts: {hosts}"
    assert server.alive()
    print(f"[space] browser round trips took {time.monotonic() - started:.1f} s")


# ---------------------------------------------------------------------------------------------------------
# The same endpoint through gradio_client


def test_gradio_client_separates_and_reports_errors(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server.url, download_files=str(tmp_path / "client"), verbose=False)
    song = write_song(tmp_path / "api_song.wav", 2.0, SR, 2, subtype="PCM_24")
    *players, archive, summary = client.predict(handle_file(song), "all", 0, 0.25, "wav", api_name="/separate")
    assert len(players) == 5 and players[4] is None  # drums, bass, other, vocals, no_vocals (hidden)
    for stem, path in zip(SOURCES, players[:4], strict=True):
        assert Path(path).name == f"api_song_{stem}.wav"
        check_stem(Path(path), 2 * SR, SR, 2)
        assert sf.info(path).subtype == "PCM_24"  # the input's bit depth is kept
    with zipfile.ZipFile(archive) as bundle:
        assert len(bundle.namelist()) == 4
    assert "api_song.wav" in summary and "4 stems" in summary

    *players, archive, summary = client.predict(handle_file(song), "karaoke", 1, 0.5, "flac", api_name="/separate")
    assert [p is not None for p in players] == [False, False, False, True, True]
    for path in players[3:]:
        assert Path(path).suffix == ".flac"
        check_stem(Path(path), 2 * SR, SR, 2)

    too_long = write_song(tmp_path / "too_long.wav", MAX_DURATION + 2, 8000, 1)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 2), np.float32), SR)
    for path, message in [
        (write_corrupt(tmp_path / "broken.wav"), "broken.wav: not a readable audio file"),
        (too_long, "too_long.wav: 12 s long; this Space separates up to 10 s"),
        (empty, "empty.wav: no audio samples (0 frames)"),
    ]:
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(path), "all", 0, 0.25, "wav", api_name="/separate")
        assert message in str(caught.value)
        assert "Traceback" not in str(caught.value)
    with pytest.raises(AppError, match="No audio"):
        client.predict(None, "all", 0, 0.25, "wav", api_name="/separate")

    # the upload limit (launch(max_file_size=...)) answers 413; small files still pass
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (MAX_FILE_SIZE + 100_000))
    with open(big, "rb") as handle:
        response = httpx.post(f"{server.url}/gradio_api/upload", files={"files": handle}, timeout=30)
    assert response.status_code == 413, response.text

    *players, _, summary = client.predict(handle_file(song), "all", 0, 0.25, "wav", api_name="/separate")
    assert all(Path(p).exists() for p in players[:4]) and "api_song.wav" in summary
    assert server.alive()


def test_gradio_client_refuses_media_that_open_other_files(server, tmp_path):
    """Playlists and concat lists (see test_hostile_media.py) through the Space's public API: refused in one
    line, and the Space still separates afterwards."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server.url, download_files=str(tmp_path / "client"), verbose=False)
    folder = tmp_path / "uploads"
    for name in media_that_open_other_files(folder, tmp_path / "private" / "secret.mp3"):
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(folder / name), "all", 0, 0.25, "wav", api_name="/separate")
        assert f"{name}: not a readable audio file" in str(caught.value), (name, str(caught.value))
    song = write_song(tmp_path / "after.wav", 1.0, SR, 2, subtype="PCM_16")
    *players, _, summary = client.predict(handle_file(song), "all", 0, 0.25, "wav", api_name="/separate")
    assert all(Path(p).exists() for p in players[:4]) and "after.wav" in summary
    assert server.alive()


def test_server_started_warm_and_made_no_outside_connections(server):
    log = server.log_text()
    assert "compiled) in" in log, log[-2000:]
    assert OUTSIDE not in log, [line for line in log.splitlines() if OUTSIDE in line]
    assert "Traceback" not in log, log[-4000:]


# ---------------------------------------------------------------------------------------------------------
# The Space's environment resolves; the publish staging


def pinned_requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "space" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"space/requirements.txt: {line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_requirements_pin_every_runtime_dependency_within_pyproject_ranges():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = pinned_requirements()
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    wanted += [Requirement(r) for r in project["project"]["optional-dependencies"]["space"]]
    for requirement in wanted:
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"space/requirements.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"


def test_requirements_resolve_with_gradio_in_a_fresh_virtualenv(tmp_path):
    """What the Space builder installs: requirements.txt with gradio[oauth] at sdk_version and `spaces`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    report = tmp_path / "report.json"
    command = [
        str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
        "-r", str(ROOT / "space" / "requirements.txt"), "gradio[oauth]==6.17.3", "spaces",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    print(f"[space] pip --dry-run resolved in {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, f"space/requirements.txt does not resolve:\n{result.stderr[-4000:]}"
    resolved = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    for name, version in pinned_requirements().items():
        assert resolved.get(name) == version, f"{name}: pinned {version}, resolved {resolved.get(name)}"
    assert "torch" not in resolved, "torch must stay out of the Space"


def test_publish_stages_an_uploadable_space_with_the_package_vendored(tmp_path):
    staged = tmp_path / "staged"
    result = subprocess.run(
        [sys.executable, str(ROOT / "space" / "publish.py"), "--stage-only", str(staged)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    package = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "modeling_hdemucs_flax").rglob("*.py"))
    assert files == sorted(
        ["README.md", "app.py", "requirements.txt", "examples/slow_ballad.ogg", "examples/synth_pop.ogg", *package]
    )
    # the staged folder runs on its own: app.py finds the vendored package beside it, not this checkout
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False"}
    script = SCRIPTS / "staged_space_imports.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=staged, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(staged / "modeling_hdemucs_flax" / "__init__.py"), "build_demo"]
    front = (staged / "README.md").read_text().split("---")[1]
    for line in ("sdk: gradio", "sdk_version: 6.17.3", 'python_version: "3.11"', "app_file: app.py"):
        assert line in front.splitlines(), line
    shutil.rmtree(staged)


# ---------------------------------------------------------------------------------------------------------
# Bounded state, private paths, the footer, clean exit (issue 11)


def test_schedule_variants_are_snapped_to_the_sliders_and_bounded(app, tiny_separator, tmp_path):
    work = app.StemSeparator(tiny_separator, max_duration=MAX_DURATION, workdir=tmp_path / "work")
    rng = np.random.default_rng(0)
    for overlap, shifts in zip(rng.uniform(0, 0.75, 200), rng.integers(0, 6, 200), strict=True):
        work._variant(float(overlap), int(shifts))  # any value the API accepts, off the step or not
    assert len(work._variants) <= work.max_variants
    assert work._variant(0.2499, 1) is work._variant(0.25, 1)
    assert {key[0] for key in work._variants} <= {round(0.05 * i, 6) for i in range(16)}
    song = write_song(tmp_path / "in" / "song.wav", 0.3, SR, 2)
    for overlap, shifts, message in [(0.9, 0, "overlap=0.9: must be between 0 and 0.75"), (0.25, 50, "shifts=50.0")]:
        with pytest.raises(AudioError, match=message):
            work(str(song), shifts=shifts, overlap=overlap)


def test_errors_about_stems_name_no_server_folder(app, tiny_separator, tmp_path):
    work = app.StemSeparator(tiny_separator, max_duration=MAX_DURATION, workdir=tmp_path / "work")
    song = write_song(tmp_path / "uploads" / "hires.wav", 0.3, 96000, 2)
    with pytest.raises(AudioError) as caught:
        work(str(song), ext="mp3")
    message = str(caught.value)
    assert message.startswith("hires_drums.mp3: MP3 cannot store 96000 Hz audio"), message
    assert str(tmp_path) not in message


def test_footer_names_the_model_loaded_and_its_licence(server, tiny_checkpoint_dir):
    """A local model is named by its folder's name, as the HTTP API names it: the server's path stays private."""
    config = httpx.get(f"{server.url}/config", timeout=30).text
    assert f"Model: {tiny_checkpoint_dir.name}, its weights under a licence its card does not state" in config
    assert str(tiny_checkpoint_dir.parent) not in config
    assert "HDEMUCS_HIGH_MUSDB_PLUS" not in config


def test_model_label_names_a_folder_by_its_name_only(tmp_path, monkeypatch):
    """The rule the footer and the HTTP API share: a Hub id as given, a folder (however it is written) by its
    name, the default model by its Hub id."""
    from modeling_hdemucs_flax.zoo.model_names import model_label
    from modeling_hdemucs_flax.zoo.pretrained import DEFAULT_MODEL

    folder = tmp_path / "models" / "small"
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    for spec in (folder, str(folder), ".", "./", "../small", "~/models/small"):
        assert model_label(spec) == "small", spec
    assert model_label("org/repo") == "org/repo" and model_label("org/repo", "v2") == "org/repo@v2"
    assert model_label(None) == DEFAULT_MODEL


def test_the_api_offers_separate_and_nothing_else(server):
    """The page's own events (the mode radio's player visibility, the examples) stay out of the API: neither the
    API page, nor the client, nor the full endpoint list shows them (gradio 6 reads `api_name=False` as a name,
    "/False")."""
    from gradio_client import Client

    public = httpx.get(f"{server.url}/gradio_api/info", timeout=30).json()
    assert list(public["named_endpoints"]) == ["/separate"] and not public["unnamed_endpoints"], public
    every = httpx.get(f"{server.url}/gradio_api/info", params={"all_endpoints": "true"}, timeout=30).json()
    names = [*every["named_endpoints"], *every["unnamed_endpoints"]]
    assert not [name for name in names if "False" in name or "shown" in name or "separate_example" in name], names
    view = Client(server.url, verbose=False).view_api(print_info=False, return_format="dict")
    assert isinstance(view, dict) and list(view["named_endpoints"]) == ["/separate"], view
    assert not view["unnamed_endpoints"], view["unnamed_endpoints"]


def test_a_file_whose_header_understates_its_length_is_stopped_at_the_limit(server, tmp_path):
    """A Matroska file whose header claims 1 s but holds 60 s: refused once the decoded audio passes the Space's
    limit, in the words of the header check; a file whose header tells the truth is refused before decoding."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server.url, download_files=str(tmp_path / "client"), verbose=False)
    cases = [
        (write_understated_matroska(tmp_path / "liar.mkv", 60.0, 1.0), "liar.mkv: more than 10 s long"),
        (write_understated_matroska(tmp_path / "honest.mkv", 12.0, 12.0), "honest.mkv: 12 s long"),
    ]
    for path, message in cases:
        started = time.monotonic()
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(path), "all", 0, 0.25, "wav", api_name="/separate")
        text = str(caught.value)
        assert f"{message}; this Space separates up to 10 s (trim the file" in text, text
        assert str(tmp_path) not in text and "Traceback" not in text
        print(f"[space] {path.name} refused in {time.monotonic() - started:.1f} s")
    # under the limit, the summary gives the decoded length, not the header's
    short = write_understated_matroska(tmp_path / "short.mkv", 6.0, 1.0)
    *_, summary = client.predict(handle_file(short), "all", 0, 0.25, "wav", api_name="/separate")
    assert "**short.mkv** (6 s, 44.1 kHz stereo)" in summary, summary
    assert server.alive()


def test_model_errors_name_the_space_setting(app, tmp_path):
    from modeling_hdemucs_flax import ModelLoadError

    checkpoint = tmp_path / "hdemucs_high_trained.pt"
    checkpoint.write_bytes(b"not a folder")
    with pytest.raises(ModelLoadError) as caught:
        app.load_separator({"HDEMUCS_MODEL": str(checkpoint)})
    assert "pass FOLDER as HDEMUCS_MODEL" in str(caught.value) and "--model" not in str(caught.value)


def test_stopping_the_space_removes_its_working_folder(tmp_path, tiny_checkpoint_dir, jax_cache):
    """A Space is stopped with SIGTERM: the app shuts down cleanly, removes its working folder and exits with
    128 + the signal, as every command does."""
    from gradio_client import Client, handle_file

    env = {
        "HDEMUCS_MODEL": str(tiny_checkpoint_dir),
        "HDEMUCS_SPACE_SEGMENT": repr(SEGMENT_SECONDS),
        "HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache),
    }
    song = write_song(tmp_path / "song.wav", 0.5, SR, 2)
    with SpaceServer(tmp_path / "space", env) as running:
        client = Client(running.url, download_files=str(tmp_path / "client"), verbose=False)
        client.predict(handle_file(song), "karaoke", 0, 0.25, "wav", api_name="/separate")
        [workdir] = (tmp_path / "space" / "tmp").glob("hdemucs-space-*")
        assert any(workdir.iterdir())
    assert running.process.returncode == 128 + signal.SIGTERM, running.log_text()[-3000:]
    assert not workdir.exists()
    assert "Traceback" not in running.log_text()
