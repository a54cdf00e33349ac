"""A new user's bad inputs: every one ends with exit 2 and one message naming the input, no traceback,
nothing that existed changed; Ctrl-C ends with one line and exit 130; files follow the umask; both HTML
reports are legible in a real browser."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI must be quiet on its own

TINY_RECIPE = """model = "tiny"
input_size = 32
embedding_dim = 8
width = 0.5
epochs = 2
batch_size = 8
"""


def cli(*args: str, tool: str = "toolkit.cli", timeout: float = 300, cwd: Path | None = None,
        umask: int | None = None) -> subprocess.CompletedProcess:
    """Run `faceprobe` (or `faceprobe-agent` with tool="device.cli") as a user would, in a subprocess."""
    return subprocess.run([sys.executable, "-m", tool, *args], env=ENV, cwd=cwd or ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type, mode, size, mtime and (for files) content."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        content = p.read_bytes() if p.is_file() and st.st_size < 1 << 20 else None
        out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_size, st.st_mtime_ns,
                                         content)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder of things a user has: a model, its export, a run, a dataset, a recipe, and bad files."""
    import cv2
    import numpy as np

    from toolkit.cli import main
    from toolkit.modelfile import save_face_model
    from toolkit.training.config import TrainConfig
    from toolkit.zoo import get_model

    w = tmp_path_factory.mktemp("user")
    save_face_model(get_model("tiny", input_size=32, embedding_dim=8), w / "model.keras")
    rng = np.random.default_rng(0)
    for person in range(3):
        (w / "faces" / f"p{person}").mkdir(parents=True)
        for k in range(4):
            cv2.imwrite(str(w / "faces" / f"p{person}" / f"{k}.png"), rng.integers(0, 256, (40, 40, 3)))
    assert main(["export", str(w / "model.keras"), "--variants", "float32", "--out", str(w / "export"),
                 "--json"]) == 0
    (w / "recipe.toml").write_text(TINY_RECIPE)
    (w / "bad_width.toml").write_text(TINY_RECIPE.replace("width = 0.5", "width = -1.0"))
    (w / "bad_epochs.toml").write_text(TINY_RECIPE.replace("epochs = 2", 'epochs = "thirty"'))
    (w / "run").mkdir()
    (w / "run" / "config.json").write_text(json.dumps(TrainConfig(**{
        "model": "tiny", "input_size": 32, "embedding_dim": 8, "width": 0.5, "epochs": 2, "batch_size": 8})
        .to_dict()))
    (w / "notes.txt").write_text("a file, not a folder\n")
    (w / "fake.keras").write_text("not a model\n")
    (w / "corrupt.json").write_text("{\"pairs\": [")
    (w / "result.json").write_text("{}\n")
    (w / "existing").mkdir()
    (w / "existing" / "keep.txt").write_text("mine\n")
    (w / "empty").mkdir()
    return w


# (arguments, text the message must contain); "{w}" is the world folder. Every case must exit 2.
FACEPROBE_CASES = [
    ([], "COMMAND"),
    (["frobnicate"], "frobnicate"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/new", "--epochs", "-2"], "--epochs"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/new", "--epochs", "abc"], "--epochs"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/new", "--batch-size", "1"], "--batch-size"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/new", "--probe-every", "0"], "--probe-every"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/new", "--set", "epochs=2"], "use --epochs"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/new", "--set", "seed=3"], "use --seed"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/new", "--set", "batch_size=8"], "--batch-size"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/new", "--set", "margin=abc"], "margin"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/new", "--set", "colour=1"], "colour"),
    (["train", "--recipe", "{w}/bad_width.toml", "--out", "{w}/new"], "width must be > 0"),
    (["train", "--recipe", "{w}/bad_epochs.toml", "--out", "{w}/new"], "epochs must be an integer"),
    (["train", "--recipe", "{w}/missing.toml", "--out", "{w}/new"], "missing.toml"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/notes.txt"], "notes.txt is a file"),
    (["train", "--out", "{w}/new"], "--recipe"),
    (["train", "--out", "{w}/existing", "--resume"], "not a faceprobe run (e.g. keep.txt)"),
    (["train", "--out", "{w}/empty", "--resume"], "no run to continue"),
    (["train", "--recipe", "{w}/recipe.toml", "--out", "{w}/faces"], "not a faceprobe run"),
    (["train", "--out", "{w}/run", "--resume", "--epochs", "7"], "the run has 2, given 7"),
    (["data", "synth", "--out", "{w}/new", "--identities", "1"], "--identities"),
    (["data", "synth", "--out", "{w}/new", "--size", "8"], "--size"),
    (["data", "synth", "--out", "{w}/notes.txt"], "notes.txt is a file"),
    (["data", "synth", "--out", "{w}/existing"], "--force"),
    (["data", "inspect", "{w}/nope"], "nope"),
    (["evaluate", "{w}/model.keras", "--data", "{w}/faces", "--folds", "1"], "--folds"),
    (["evaluate", "{w}/model.keras", "--data", "{w}/faces", "--out", "{w}/result.json"], "result.json"),
    (["evaluate", "{w}/model.keras", "--data", "{w}/faces", "--out", "{w}/existing"], "is a folder"),
    (["evaluate", "{w}/fake.keras", "--data", "{w}/faces"], "not a Keras model file"),
    (["evaluate", "{w}/model.keras", "--data", "{w}/nope"], "--data {w}/nope"),
    (["check", "{w}/export/model.float32.tflite", "--out", "{w}/new"], "is a TFLite model"),
    (["evaluate", "{w}/model.keras", "--data", "{w}/faces", "--pairs", "{w}/corrupt.json"], "corrupt.json"),
    (["probe", "{w}/model.keras", "--out", "{w}/new", "--n-images", "-2"], "--n-images"),
    (["probe", "{w}/model.keras", "--out", "{w}/new", "--n-images", "0"], "--n-images"),
    (["probe", "{w}/model.keras", "--out", "{w}/new", "--subspace", "dct:x"], "--subspace"),
    (["probe", "{w}/model.keras", "--out", "{w}/new", "--subspace", "grid:0"], "N >= 1"),
    (["probe", "{w}/model.keras", "--out", "{w}/notes.txt"], "notes.txt is a file"),
    (["probe", "{w}/model.keras", "--out", "{w}/existing"], "--force"),
    # A float .tflite is probed by finite differences (docs/foreign.md); it still needs start images.
    (["probe", "{w}/export/model.float32.tflite", "--out", "{w}/new"], "no start images"),
    (["export", "{w}/model.keras", "--out", "{w}/export"], "--force"),
    (["export", "{w}/model.keras", "--out", "{w}/existing", "--force"], "did not write"),
    (["export", "{w}/model.keras", "--out", "{w}", "--force"], "holds the input"),
    (["export", "{w}/model.keras", "--out", "{w}/new", "--calibration-size", "0"], "--calibration-size"),
    (["export", "{w}/model.keras", "--out", "{w}/new", "--float-ops", "DEPTHWISE"], "unknown op 'DEPTHWISE'"),
    (["export", "{w}/model.keras", "--out", "{w}/new", "--variants", "float16", "--float-ops",
      "DEPTHWISE_CONV_2D"], "--float-ops applies to the int8 variant"),
    (["check", "{w}/model.keras", "--out", "{w}/new", "--float-ops", "MEANS"], "unknown op 'MEANS'"),
    (["check", "{w}/model.keras", "--out", "{w}/new", "--sample", "-4"], "--sample"),
    (["check", "{w}/model.keras", "--out", "{w}/new", "--feature-images", "0"], "--feature-images"),
    (["check", "{w}/model.keras", "--out", "{w}/notes.txt"], "notes.txt is a file"),
    (["check", "{w}/model.keras", "--out", "{w}/existing"], "--force"),
    (["report", "{w}/nope"], "nope"),
    (["report", "{w}/existing"], "holds no probe results"),
    (["deploy", "{w}/export/model.float32.probe.tflite", "--agent", "http://127.0.0.1:9"], "127.0.0.1:9"),
]
AGENT_CASES = [
    (["run", "{w}/export/model.float32.tflite", "{w}/corrupt.json", "--out", "{w}/new"],
     "model.float32.probe.tflite"),
    (["run", "{w}/export/model.float32.probe.tflite", "{w}/corrupt.json", "--out", "{w}/new"], "corrupt"),
    (["run", "{w}/export/model.float32.probe.tflite", "p.json", "--out", "{w}/new", "--max-batch", "0"],
     "--max-batch"),
    (["run", "{w}/export/model.float32.probe.tflite", "p.json", "--out", "{w}/new", "--kind", "x"], "--kind"),
    (["run", "{w}/export/model.float32.probe.tflite", "p.json", "--out", "{w}/new", "--threads", "-1"],
     "--threads"),
    (["serve", "--store", "{w}/store", "--port", "70000"], "--port"),
    (["serve", "--store", "{w}/store", "--token-file", "{w}/nope"], "nope"),
]


@pytest.mark.parametrize(("tool", "args", "expected"),
                         [("toolkit.cli", a, e) for a, e in FACEPROBE_CASES]
                         + [("device.cli", a, e) for a, e in AGENT_CASES],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_message_and_exit_2(world, tool, args, expected):
    argv = [a.replace("{w}", str(world)) for a in args]
    before = snapshot(world)
    proc = cli(*argv, tool=tool, cwd=world)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert expected.replace("{w}", str(world)) in proc.stderr, proc.stderr
    # One message: the error line (argparse adds its usage lines above it), nothing from TensorFlow.
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert not any(noise in proc.stderr for noise in ("oneDNN", "cuInit", "absl", "XNNPACK"))
    assert snapshot(world) == before, "a refused command changed files that existed"


def test_debug_shows_the_traceback_and_version_help_work(world):
    proc = cli("probe", str(world / "fake.keras"), "--out", str(world / "new"), "--debug", cwd=world)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "not a Keras model file" in proc.stderr
    for tool in ("toolkit.cli", "device.cli"):
        version = cli("--version", tool=tool)
        assert version.returncode == 0 and version.stdout.split()[-1][0].isdigit()

    def helptext_of(*args, tool="toolkit.cli"):
        return " ".join(cli(*args, "--help", tool=tool).stdout.split())  # as read, not as wrapped

    helptext = helptext_of("train")
    assert "examples:" in helptext and "faceprobe train --out runs/tiny --resume" in helptext
    assert "the recipe's epochs" in helptext
    agent_help = helptext_of("run", tool="device.cli")
    assert "activations:" in agent_help and "(default: ascent)" in agent_help
    assert "perturbations (default: 0)" in helptext_of("check")


def test_existing_export_is_replaced_whole_with_force_in_the_umask_mode(world, tmp_path):
    """--force gives a folder with the new export only (never a mix of two), its files readable as the
    umask says (not 0600)."""
    out = tmp_path / "export"
    shutil.copytree(world / "export", out)
    (out / "model.int8.tflite").write_bytes(b"an older export's file")
    proc = cli("export", str(world / "model.keras"), "--variants", "float16", "--out", str(out), "--force",
               "--json", umask=0o022)
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    assert [p.name for p in files] == [
        "model.float16.manifest.json", "model.float16.probe.manifest.json", "model.float16.probe.tflite",
        "model.float16.tflite"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the old folder is gone
    script = ("import sys; from toolkit import atomic; atomic.write_json(sys.argv[1], {}); "
              "p = atomic.atomic_path(sys.argv[2])\nwith p as t: t.write_text('x')")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.json"), str(tmp_path / "b.txt")],
                   env=ENV, cwd=ROOT, check=True, preexec_fn=lambda: os.umask(0o027))
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"never reached the point to interrupt (rc {proc.returncode}): {err[-2000:]}")
        time.sleep(0.1)


def test_ctrl_c_in_train_is_one_line_and_resumable(world, tmp_path):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.npz"
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "train", "--recipe",
                             str(world / "recipe.toml"), "--data", str(world / "faces"), "--out", str(run),
                             "--epochs", "400"], env=ENV, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wait_for(ckpt.exists, 240, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    lines = [line.split("\r")[-1] for line in err.splitlines() if line.split("\r")[-1].strip()]
    message = f"faceprobe train: interrupted; continue with `faceprobe train --out {run} --resume`"
    assert lines[-1] == message and [line for line in lines if "interrupted" in line] == [message], err
    # Nothing half-written: no temporary files, and the checkpoint and config read back.
    assert not [p for p in run.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    import numpy as np

    with np.load(ckpt) as z:
        epoch = json.loads(bytes(z["meta"]).decode())["epoch"]
    assert epoch >= 1 and json.loads((run / "config.json").read_text())["epochs"] == 400
    assert not (run / "model.keras").exists()
    # The hint works: --resume alone continues with the saved settings (a differing flag is refused).
    refused = cli("train", "--out", str(run), "--resume", "--epochs", "3")
    assert refused.returncode == 2 and "the run has 400, given 3" in refused.stderr


def test_ctrl_c_in_export_writes_nothing(world, tmp_path):
    out = tmp_path / "export"
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "export", str(world / "model.keras"),
                             "--variants", "float32,float16,dynamic_int8,int8", "--calibration",
                             str(world / "faces"), "--out", str(out)],
                            env=ENV, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: any(out.glob(".export-*/*.tflite")), 240, proc)  # converting has started
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in stdout + err and "interrupted" in err and stdout == ""
    assert not out.exists()  # no half export left


# ------------------------------------------------------------------------------------- in a real browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
WIDTH = 1280
# Runs in the page: its width, and the colours of the headline's text and of what is behind it.
MEASURE = """<script>
function bg(el) {
  for (; el; el = el.parentElement) {
    const c = getComputedStyle(el).backgroundColor;
    if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c;
  }
  return 'rgb(255, 255, 255)';
}
window.addEventListener('load', () => {
  const head = document.querySelector('h1');
  const parts = [head, ...head.parentElement.querySelectorAll('code')];
  const out = {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
               bodyOverflow: document.body.scrollWidth - document.body.clientWidth,
               text: parts.map(e => ({text: e.textContent.slice(0, 60), color: getComputedStyle(e).color,
                                      background: bg(e)}))};
  document.documentElement.setAttribute('data-measured', JSON.stringify(out));
});
</script>"""


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def _rgb(css: str) -> tuple[float, ...]:
    return tuple(float(v) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def _contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two CSS rgb() colours."""
    def lum(rgb):
        c = [v / 255 for v in rgb]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((lum(_rgb(a)), lum(_rgb(b))), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def measure_in_browser(browser: str, page: Path, tmp_path: Path) -> dict:
    html = page.read_text().replace("</head>", MEASURE + "</head>", 1)
    probe = tmp_path / f"measure-{page.parent.name}.html"
    probe.write_text(html)
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={WIDTH},900", "--virtual-time-budget=5000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    import re

    match = re.search(r"data-measured=\"([^\"]*)\"", proc.stdout)
    assert match, f"the page was not measured: {proc.stderr[-1500:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_reports_are_legible_at_1280_px(world, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser installed (looked for {', '.join(BROWSERS)}; on Debian: "
                    "apt-get install chromium)")
    from toolkit.cli import main

    probe, check = tmp_path / "probe", tmp_path / "check"
    assert main(["probe", str(world / "model.keras"), "--images", str(world / "faces"), "--n-images", "2",
                 "--steps", "2", "--per-stage", "2", "--out", str(probe), "--json"]) == 0
    assert main(["check", str(world / "model.keras"), "--data", str(world / "faces"), "--sample", "4",
                 "--no-features", "--search", "never", "--out", str(check), "--json"]) in (0, 1)
    for page in (probe / "report.html", check / "report.html"):
        m = measure_in_browser(browser, page, tmp_path)
        assert m["innerWidth"] == WIDTH
        assert m["scrollWidth"] <= WIDTH, f"{page} is {m['scrollWidth']} px wide at {WIDTH} px"
        assert m["bodyOverflow"] <= 0, f"{page}: content runs {m['bodyOverflow']} px past the page's edge"
        for part in m["text"]:
            ratio = _contrast(part["color"], part["background"])
            assert ratio >= 4.5, f"{page}: {part['text']!r} is {part['color']} on {part['background']}"
    assert len(m["text"]) >= 2  # the check's headline: its words and its code spans (worst tap, ...)


def test_thin_data_is_named_in_warnings_and_inspect(tmp_path, capsys):
    import cv2
    import numpy as np

    from toolkit.cli import main
    from toolkit.data import load_identity_folders

    for person, shapes in {"a": [(1, 1), (80, 80)], "b": [(80, 80)], "c": [(80, 80), (80, 80)]}.items():
        (tmp_path / person).mkdir()
        for k, shape in enumerate(shapes):
            cv2.imwrite(str(tmp_path / person / f"{k}.png"), np.full((*shape, 3), 40 * k + 60, np.uint8))
    with pytest.warns(UserWarning) as caught:
        load_identity_folders(tmp_path, image_size=64, progress=False)
    messages = [str(w.message) for w in caught]
    assert any("smaller than the model's 64 px input" in m and "1x1" in m and "a/0.png" in m
               for m in messages)
    assert any("1 identities" in m and "single image (b)" in m for m in messages)
    assert main(["data", "inspect", str(tmp_path), "--size", "64", "--crop"]) == 0
    out = capsys.readouterr().out
    assert "identities with a single image: b" in out and "smaller than 64 px (enlarged): 1" in out
    # Flat grey squares hold no face: inspect names every one of them.
    assert "no face found (centre crop used): 5" in out
    assert all(f"{tmp_path / p}" in out for p in ("a/0.png", "a/1.png", "b/0.png", "c/0.png", "c/1.png"))
