"""The course in a real browser: JupyterLab as `make lab` serves it, driven in headless Chromium.

    make test-browser          # installs Playwright in .venv-browser, then runs this
    .venv-browser/bin/python tools/browser_test.py --python .venv/bin/python [--only 04] [--keep]

For every notebook in solutions/ (found, not listed), the learner version and the complete one:
  1. open it in JupyterLab (served on 127.0.0.1 with tools/lab.py's command line, on a throw-away
     copy of the learner's folder), Run All from the Run menu, wait until the kernel is idle, and fail
     on any error output or any JavaScript error on the page; the Run-All time is printed;
  2. where the notebook draws a circuitsvis view, find the rendered element (offline JavaScript);
  3. move the first ipywidgets control that redraws a figure or an interact's output, and check that it changed;
  4. (learner version) type the wrong answer that the exercise cell's metadata carries
     (`{"course": {"wrong_answer": "<cell source>"}}`) into that cell, run it and its check, and
     expect a one-line CheckFailed with no traceback; a notebook without one is reported and skipped
     for this step only;
  5. save (Ctrl+S), close the tab and check that its kernel stopped (the JupyterLab setting in
     tools/lab_settings) and that no tracked file changed.
Before all that, with the first notebook marked as updated since the learner copied it, JupyterLab
must open on my_work/UPDATES.md, rendered, naming it and the command that takes the new version.
It also checks that the glyphs the course prints (✔ ○ ●) render with a real font, not as boxes,
and reports any other character of a notebook's Markdown that no installed font has (emoji, say).
Screenshots go to build/browser/. Playwright drives Debian's Chromium (/usr/bin/chromium); it
never downloads a browser of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import lab  # noqa: E402
import learner_copies  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]
GLYPHS = {"✔": "a passed check", "○": "a skipped check, an empty difficulty dot", "●": "a difficulty dot"}
CIRCUITSVIS_CALL = re.compile(r"\b(attention_patterns|colored_tokens|circuitsvis)\b")
TOKEN = "course-browser-test"
FONTS_USED: dict[str, set[str]] = {}


@dataclass
class Result:
    notebook: str
    version: str
    run_all_s: float = float("nan")
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    saved_kb: float = float("nan")
    stderr: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """JupyterLab on a throw-away learner folder, started with the same command line as `make lab`."""

    def __init__(self, python: str, work: Path, scratch: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.slow: list[str] = []  # API calls that had to be repeated, reported at the end
        env = lab.environment()
        env["JUPYTERLAB_SETTINGS_DIR"] = str(scratch / "user-settings")  # not the developer's own
        env["JUPYTERLAB_WORKSPACES_DIR"] = str(scratch / "workspaces")
        env["JUPYTER_RUNTIME_DIR"] = str(scratch / "runtime")
        cmd = lab.command(work, port=self.port, token=TOKEN, open_browser=False, python=python)
        self.log = open(scratch / "jupyter.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=work)
        deadline = time.time() + 120
        while time.time() < deadline:
            with contextlib.suppress(OSError):
                self.api("status", patience=0)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited at start; see {scratch / 'jupyter.log'}")
            time.sleep(0.5)
        raise RuntimeError("JupyterLab did not answer within 120 s")

    def api(self, path: str, method: str = "GET", patience: float = 90.0):
        """One call to the server's REST API. On a 2-core machine a server that is starting a kernel
        next to Chromium and a running notebook has been seen to take over 10 s to answer: a GET that
        times out or is refused is asked again until `patience` seconds have passed (0: once only)."""
        deadline = time.time() + patience
        while True:
            req = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                         headers={"Authorization": f"token {TOKEN}"})
            asked = time.time()
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    body = r.read()
                break
            except OSError as e:  # URLError, a refused connection and a timeout are all OSErrors
                if method != "GET" or time.time() >= deadline:
                    raise
                self.slow.append(f"GET /api/{path} failed after {time.time() - asked:.0f} s ({e}); asked again")
                time.sleep(1.0)
        return json.loads(body) if body else None

    def kernels(self) -> list[dict]:
        return self.api("kernels")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_until_done(page: Page, server: Server, timeout: float) -> None:
    """Wait until every queued cell ran: no [*] prompt, and the kernel idle for a second."""
    deadline, idle_since = time.time() + timeout, None
    while time.time() < deadline:
        busy = page.locator(".jp-InputPrompt", has_text="[*]").count() > 0
        states = [k["execution_state"] for k in server.kernels()]
        if not busy and states and all(s == "idle" for s in states):
            idle_since = idle_since or time.time()
            if time.time() - idle_since > 1.0:
                return
        else:
            idle_since = None
        time.sleep(0.25)
    raise TimeoutError(f"cells still running after {timeout:.0f} s")


def menu(page: Page, top: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{top}$")).click()
    page.locator(".lm-Menu-content .lm-Menu-itemLabel").get_by_text(item, exact=True).click()


def save(page: Page, path: Path) -> dict:
    """Save the notebook as a learner would (Ctrl+S) and read back what JupyterLab wrote."""
    before = path.stat().st_mtime_ns
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    deadline = time.time() + 30
    while path.stat().st_mtime_ns == before and time.time() < deadline:
        page.wait_for_timeout(200)
    page.wait_for_timeout(300)
    return json.loads(path.read_text())


def errors_in(cells: list[dict]) -> list[str]:
    """Each error output: its exception and the first line of what JupyterLab shows."""
    return [f"cell {i}: {o['ename']}: {o['evalue'][:200]}" for i, c in enumerate(cells)
            for o in c.get("outputs", []) if o["output_type"] == "error"]


def figure_signature(cell) -> str:
    """What a control can redraw in its cell: the images, and the text an interact shows (HTML tables, lists)."""
    imgs = [(img.get_attribute("src") or "")[-200:] for img in cell.locator("img").all()]
    shown = [(out.text_content() or "")[:2000] for out in cell.locator(".widget-output").all()]
    return "|".join(imgs + shown) if any(imgs + shown) else ""


def move_control(control, kind: str) -> str:
    """Change one ipywidgets control as a person would; return what was done."""
    if kind == "slider":
        handle = control.locator(".noUi-handle").first
        now, top = handle.get_attribute("aria-valuenow"), handle.get_attribute("aria-valuemax")
        key = "ArrowLeft" if now is not None and now == top else "ArrowRight"
        handle.focus()
        handle.press(key)
        return f"slider {key}"
    if kind == "toggle":
        control.locator("button:not(.mod-active)").first.click()
        return "toggle button"
    if kind == "dropdown":
        select = control.locator("select").first
        options = select.locator("option").all()
        current = select.input_value()
        other = next(o.get_attribute("value") for o in options if o.get_attribute("value") != current)
        select.select_option(other)
        return "dropdown"
    control.locator("input").first.click()
    return "checkbox"


CONTROLS = [("slider", ".widget-slider, .widget-hslider"), ("toggle", ".widget-toggle-buttons"),
            ("dropdown", ".widget-dropdown"), ("checkbox", ".widget-checkbox")]


def check_widget(page: Page, shots: Path, tag: str) -> str:
    """Find a control whose move redraws a figure or an output in its cell; raise AssertionError if none does."""
    tried = []
    for kind, selector in CONTROLS:
        for control in page.locator(f".jp-OutputArea {selector}").all()[:4]:
            cell = control.locator("xpath=ancestor::div[contains(@class,'jp-CodeCell')][1]")
            before = figure_signature(cell)
            if not before:
                continue
            control.scroll_into_view_if_needed()
            cell.locator(".jp-OutputArea").first.screenshot(path=str(shots / f"{tag}-widget-before.png"))
            action = move_control(control, kind)
            deadline = time.time() + 30
            while time.time() < deadline:
                if figure_signature(cell) not in (before, ""):
                    page.wait_for_timeout(300)
                    cell.locator(".jp-OutputArea").first.screenshot(path=str(shots / f"{tag}-widget-after.png"))
                    return f"{action} redrew the output"
                page.wait_for_timeout(200)
            tried.append(action)
    raise AssertionError("no ipywidgets control changed a figure" + (f" (tried: {', '.join(tried)})" if tried else
                                                                      " (no control next to a figure)"))


def check_circuitsvis(page: Page, shots: Path, tag: str) -> str:
    views = page.locator('[id^="circuits-vis-"]')
    deadline = time.time() + 30
    while time.time() < deadline:
        rendered = [v for v in views.all() if v.evaluate("el => el.childElementCount") > 0]
        if rendered:
            rendered[0].scroll_into_view_if_needed()
            rendered[0].screenshot(path=str(shots / f"{tag}-circuitsvis.png"))
            return f"{len(rendered)} of {views.count()} circuitsvis views rendered"
        page.wait_for_timeout(300)
    raise AssertionError(f"circuitsvis: {views.count()} view elements, none rendered")


def check_wrong_answer(page: Page, server: Server, nb: dict, path: Path, shots: Path, tag: str) -> str:
    """Type the exercise cell's wrong answer, run it and its check; expect a one-line CheckFailed."""
    marked = [i for i, c in enumerate(nb["cells"]) if "wrong_answer" in c.get("metadata", {}).get("course", {})]
    if len(marked) != 1:
        raise LookupError(f"{len(marked)} cells carry course.wrong_answer metadata (one expected)")
    i = marked[0]
    wrong = nb["cells"][i]["metadata"]["course"]["wrong_answer"]
    check = next(j for j in range(i + 1, len(nb["cells"])) if nb["cells"][j]["cell_type"] == "code")
    cells = page.locator(".jp-Notebook .jp-Cell")
    editor = cells.nth(i).locator(".cm-content")
    editor.scroll_into_view_if_needed()
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(wrong)
    typed = editor.evaluate("el => el.cmView ? el.cmView.view.state.doc.toString() : el.innerText")
    if typed.strip() != wrong.strip():
        raise AssertionError("the typed cell differs from the wrong answer (editor auto-indent?)")
    page.keyboard.press("Shift+Enter")  # run the exercise cell; the selection moves on
    wait_until_done(page, server, 120)
    for _ in range(check - i - 1):  # skip to the check cell
        page.keyboard.press("j")
    page.keyboard.press("Shift+Enter")
    wait_until_done(page, server, 300)
    cells.nth(check).screenshot(path=str(shots / f"{tag}-wrong-answer.png"))
    shown = [o.inner_text().strip() for o in cells.nth(check).locator(".jp-OutputArea-output").all()]
    outputs = save(page, path)["cells"][check]["outputs"]
    errors = [o for o in outputs if o["output_type"] == "error"]
    if len(errors) != 1 or errors[0]["ename"] != "CheckFailed":
        raise AssertionError(f"the check after the wrong answer did not raise CheckFailed (shown: {shown})")
    if len(shown) != 1 or "\n" in shown[0] or "Traceback" in shown[0] or not shown[0].startswith("CheckFailed"):
        raise AssertionError(f"the check failed, but not in one CheckFailed line: {shown!r:.300}")
    return shown[0][:120]


def drawn_as_box(page: Page, client, where: str, chars: list[str], shots: Path | None = None) -> dict[str, list[str]]:
    """Render each character in the font of the first `where` element; return those drawn as a box
    (the same pixels as a private-use character no font has), each with the fonts Chromium used."""
    host = page.locator(where).first
    client.send("DOM.enable")
    client.send("CSS.enable")

    def draw(char: str) -> tuple[bytes, list[str]]:
        host.evaluate("(el, g) => { let s = document.createElement('span'); s.id = 'glyph-probe';"
                      "s.style.fontSize = '32px'; s.textContent = g; el.prepend(s); }", char)
        probe = page.locator("#glyph-probe")
        png = probe.screenshot()
        root = client.send("DOM.getDocument")["root"]["nodeId"]
        node = client.send("DOM.querySelector", {"nodeId": root, "selector": "#glyph-probe"})["nodeId"]
        fonts = [f["familyName"] for f in client.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]]
        probe.evaluate("el => el.remove()")
        return png, fonts

    box, _ = draw("\ue000")
    boxes = {}
    for char in chars:
        png, fonts = draw(char)
        FONTS_USED.setdefault(char, set()).update(fonts)
        if shots is not None:
            (shots / f"glyph-{ord(char):x}-{where.strip('.')}.png").write_bytes(png)
        if png == box:
            boxes[char] = fonts
    return boxes


def check_glyphs(page: Page, shots: Path) -> str:
    """The glyphs the course prints (✔ ○ ●) in an output's font and a Markdown cell's font."""
    client = page.context.new_cdp_session(page)
    problems = [f"{char} in {where} is drawn as a box" for where in (".jp-OutputArea-output", ".jp-RenderedMarkdown")
                for char in drawn_as_box(page, client, where, list(GLYPHS), shots)]
    if problems:
        raise AssertionError("; ".join(problems))
    return "✔ ○ ● drawn by a real font, not a box"


def markdown_boxes(page: Page, nb: dict) -> list[str]:
    """Every non-ASCII character of the notebook's Markdown that no installed font draws (an emoji,
    say, on a machine without an emoji font). Reported, not failed."""
    chars = sorted({ch for c in nb["cells"] if c["cell_type"] == "markdown" for ch in "".join(c["source"])
                    if ord(ch) > 127 and ch.isprintable() and not ch.isspace()})
    boxes = drawn_as_box(page, page.context.new_cdp_session(page), ".jp-RenderedMarkdown", chars) if chars else {}
    return [" ".join(boxes)] if boxes else []


def check_updates_notice(page: Page, server: Server, name: str, shots: Path) -> bool:
    """JupyterLab opens on UPDATES.md, rendered, naming the updated notebook and how to take it."""
    page.goto(f"{server.base}/?token={TOKEN}")  # where `make lab` sends the browser
    notice = page.locator(".jp-RenderedMarkdown", has_text="Newer versions of your notebooks")
    try:
        notice.first.wait_for(timeout=60_000)
        ok = name in notice.first.inner_text() and f"make take NB={name[:2]}" in notice.first.inner_text()
    except Exception:  # noqa: BLE001
        ok = False
    page.screenshot(path=str(shots / "updates-notice.png"))
    print(f"  UPDATES.md shown in JupyterLab at start, naming {name}: {'ok' if ok else 'FAILED'}", flush=True)
    return ok


def run_notebook(page: Page, server: Server, rel: str, nb: dict, version: str, shots: Path,
                 page_errors: list[str], work: Path, timeout: float, glyphs: dict) -> Result:
    name = Path(rel).name
    res = Result(name, version)
    tag = f"{Path(rel).stem}-{version}"
    page_errors.clear()
    page.goto(f"{server.base}/lab/tree/{rel}?reset&token={TOKEN}")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    wait_until_done(page, server, 120)
    start = time.time()
    menu(page, "Run", "Run All Cells")
    try:
        wait_until_done(page, server, timeout)
        res.run_all_s = time.time() - start
    except TimeoutError as e:
        res.failed.append(f"Run All: {e}")
    page.screenshot(path=str(shots / f"{tag}-run-all.png"))
    ran = save(page, work / rel)["cells"]
    errors = errors_in(ran)
    unrun = [i for i, c in enumerate(ran) if c["cell_type"] == "code" and c["execution_count"] is None]
    if errors:
        res.failed.append(f"Run All: {len(errors)} error output(s), first: {errors[0]}")
    elif unrun:
        res.failed.append(f"Run All: {len(unrun)} code cells never ran (first: cell {unrun[0]})")
    elif not res.failed:
        res.passed.append(f"Run All in {res.run_all_s:.1f} s, no error output")
    res.stderr = [f"cell {i}: {''.join(o['text']).strip().splitlines()[0][:150]}" for i, c in enumerate(ran)
                  for o in c.get("outputs", []) if o["output_type"] == "stream" and o["name"] == "stderr"
                  and "".join(o["text"]).strip()]

    steps = [("circuitsvis", lambda: check_circuitsvis(page, shots, tag))
             if any(CIRCUITSVIS_CALL.search("".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code")
             else None,
             ("widget", lambda: check_widget(page, shots, tag))]
    if version == "learner":
        steps.append(("wrong answer", lambda: check_wrong_answer(page, server, nb, work / rel, shots, tag)))
    if not glyphs and version == "solution":
        glyphs["checked"] = True
        steps.append(("glyphs", lambda: check_glyphs(page, shots)))
    for step in filter(None, steps):
        label, fn = step
        try:
            res.passed.append(f"{label}: {fn()}")
        except LookupError as e:
            res.skipped.append(f"{label}: {e}")
        except Exception as e:  # noqa: BLE001 (any failure of a step is reported, the others still run)
            res.failed.append(f"{label}: {str(e).splitlines()[0][:300]}")
    if page_errors:
        res.failed.append(f"page errors: {page_errors[:3]}")
    if version == "solution":
        with contextlib.suppress(Exception):
            res.notes += [f"Markdown characters drawn as boxes (no font has them here): {b}" for b in markdown_boxes(page, nb)]

    save(page, work / rel)
    res.saved_kb = (work / rel).stat().st_size / 1024
    menu(page, "File", "Close Tab")
    with contextlib.suppress(Exception):  # a "save changes?" dialog, if the save above was late
        page.get_by_role("button", name=re.compile("Discard|Don.t Save")).click(timeout=2000)
    deadline = time.time() + 20
    while server.kernels() and time.time() < deadline:
        time.sleep(0.25)
    if server.kernels():
        res.failed.append("kernel still running after its tab closed")
    else:
        res.passed.append("kernel stopped when its tab closed")
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"),
                        help="the course's interpreter (JupyterLab and the kernel run on it)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--root", type=Path, default=ROOT, help="the course checkout to test")
    parser.add_argument("--only", nargs="*", default=None, help="notebook numbers, e.g. 04 05")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed for one Run All")
    parser.add_argument("--shots", type=Path, default=ROOT / "build" / "browser")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    # The server runs in a scratch folder: a relative interpreter path (make passes .venv/bin/python) would
    # point nowhere there. Absolute, but not resolved: a venv's python is a symlink that must stay one.
    args.python = str(Path.cwd() / args.python) if not Path(args.python).is_absolute() else args.python

    root = args.root.resolve()
    names = [p.name for p in sorted((root / "solutions").glob("*.ipynb"))
             if args.only is None or p.name[:2] in args.only]
    if not names:
        print("browser: no notebooks found in solutions/")
        return 1
    args.shots.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="course-browser-"))
    work = scratch / "my_work"
    learner_copies.sync(root, work)
    learner_copies.copy_solutions(root, work)
    record = work / learner_copies.RECORD  # pretend the course updated the first notebook since it was copied
    record.write_text(record.read_text().replace(json.loads(record.read_text())[names[0]], "an older version"))
    learner_copies.sync(root, work)
    tracked_before = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    print(f"Testing {len(names)} notebooks in Chromium ({args.chromium}), learner and solution versions; "
          f"screenshots in {args.shots}", flush=True)
    server = Server(args.python, work, scratch)
    results, glyphs, updates_ok = [], {}, False
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)[:200]))
            updates_ok = check_updates_notice(page, server, names[0], args.shots)
            for name in names:
                for version, rel in (("learner", name), ("solution", f"solutions/{name}")):
                    nb = json.loads((work / rel).read_text())
                    try:
                        res = run_notebook(page, server, rel, nb, version, args.shots, page_errors, work,
                                           args.timeout, glyphs)
                    except Exception as e:  # noqa: BLE001 (reported as this notebook's failure; the rest still run)
                        res = Result(name, version, failed=[f"the test stopped: {type(e).__name__}: "
                                                            f"{str(e).splitlines()[0][:300] if str(e) else ''}"])
                        with contextlib.suppress(Exception):  # leave no tab or kernel behind for the next one
                            page.goto(f"{server.base}/lab?reset&token={TOKEN}")
                            for k in server.kernels():
                                server.api(f"kernels/{k['id']}", method="DELETE")
                    results.append(res)
                    mark = "FAIL" if res.failed else "ok"
                    print(f"  {name:28s} {version:8s} Run All {res.run_all_s:6.1f} s  saved {res.saved_kb:7.0f} kB  {mark}",
                          flush=True)
                    for line in res.failed:
                        print(f"      FAILED  {line}")
                    for line in res.skipped:
                        print(f"      skipped {line}")
                    for line in res.stderr[:3]:
                        print(f"      stderr  {line}")
                    for line in res.notes:
                        print(f"      note    {line}")
            browser.close()
    finally:
        server.stop()
    for line in server.slow:
        print(f"  note    the server answered slowly: {line}")
    log = (scratch / "jupyter.log").read_text(errors="replace")
    quiet = "without encryption" not in log  # ipykernel's warning for TCP kernels; IPC sockets need none
    print(f"  kernels started with no 'running over TCP without encryption' warning: {'ok' if quiet else 'FAILED'}")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    tracked_after = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    untouched = tracked_before == tracked_after

    print("\nRun-All times in Chromium (s):")
    print(f"  {'notebook':28s} {'learner':>8s} {'solution':>9s}")
    for name in names:
        t = {r.version: r.run_all_s for r in results if r.notebook == name}
        print(f"  {name:28s} {t.get('learner', float('nan')):8.1f} {t.get('solution', float('nan')):9.1f}")
    for glyph, meaning in GLYPHS.items():
        print(f"  glyph {glyph} ({meaning}): drawn with {', '.join(sorted(FONTS_USED.get(glyph, []))) or '?'}")
    passed = sum(len(r.passed) for r in results) + untouched + updates_ok + quiet
    failed = sum(len(r.failed) for r in results) + (not untouched) + (not updates_ok) + (not quiet)
    skipped = sum(len(r.skipped) for r in results)
    if not untouched:
        print("FAILED: saving in JupyterLab changed tracked files:\n" + tracked_after)
    print(f"browser: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
