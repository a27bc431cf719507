"""Headless Chromium check of a Snakemake report: every result is actually displayed.

:func:`assert_figures_displayed` opens a report (``snakemake --report report.zip``, or a
self-contained ``report.html``) in headless Chromium and drives it over the DevTools
protocol through a pipe (``--remote-debugging-pipe``: file descriptors 3 and 4, NUL-terminated
JSON messages; no port, no websocket package). The report is a JavaScript app that renders a
result only when it is clicked, so for every entry of its ``results`` table the check does
what a click does: ``new ToggleViewManager(app).handleSelectedResult(path)``, the app's own
code, which shows an ``<img>`` for SVG, PNG and JPEG and an ``<iframe>`` for HTML. Then:

- an image must load and decode (``img.decode()``) with a non-zero natural width and height
  and a non-zero box on the page: a corrupt SVG or PNG fails here;
- an HTML result's frame (inspected in an isolated world of that frame, which works for the
  zip's ``file://`` pages and for the self-contained report's ``data:`` frames alike) must be
  a loaded document with visible size and text, every ``<img>`` in it decoded;
- every result must have a caption;
- the page's JavaScript must throw no uncaught exception.

The results' labels must be exactly ``expected_labels`` (checked first, before any result is
shown). Any failure raises AssertionError listing every broken result.

Chromium: ``$CHROMIUM``, else ``chromium`` on PATH; :func:`chromium_path` installs Debian's
package with ``tests/browser/up.sh`` when it is missing and the tests run as root (CI), and
fails otherwise (the check must never be skipped silently).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

UP = Path(__file__).with_name("up.sh")
TIMEOUT = 30.0  # seconds for the page, and for each result, to show
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--mute-audio", "--hide-scrollbars", "--window-size=1400,1000",
         "--remote-debugging-pipe")  # fmt: skip

# The report's globals: `results` (path -> entry), `app` (the React app), the view managers.
_READY = (
    "document.readyState === 'complete' && typeof results === 'object'"
    " && typeof app === 'object' && app !== null && typeof ToggleViewManager === 'function'"
)
_LIST = """Object.entries(results).map(([path, r]) => ({path, labels: r.labels || {},
    mime: r.mime_type, caption: (r.caption || '').replace(/<[^>]*>/g, '').trim()}))"""
# Show one result as a click does and report what the page shows.
_SHOW = """async (path) => {
  const uri = results[path].data_uri;
  new ToggleViewManager(app).handleSelectedResult(path);
  const deadline = Date.now() + %(ms)d;
  const find = (tag) => [...document.getElementsByTagName(tag)]
      .find((e) => e.getAttribute('src') === uri);
  let el;
  while (!(el = find('img') || find('iframe'))) {
    if (Date.now() > deadline) return {kind: 'none', error: 'the app showed no img or iframe'};
    await new Promise((r) => setTimeout(r, 25));
  }
  const box = el.getBoundingClientRect();
  const out = {kind: el.tagName.toLowerCase(), box: [box.width, box.height]};
  if (out.kind === 'iframe') {
    out.url = new URL(uri, document.baseURI).href;
    return out;
  }
  try { await el.decode(); } catch (e) { out.error = 'the image does not decode: ' + e; }
  out.size = [el.naturalWidth, el.naturalHeight];
  return out;
}"""
# Inside an HTML result's frame: a loaded document with visible content.
_FRAME = """(async () => {
  const deadline = Date.now() + %(ms)d;
  while (document.readyState !== 'complete') {
    if (Date.now() > deadline) return {error: 'the document did not finish loading'};
    await new Promise((r) => setTimeout(r, 25));
  }
  const body = document.body;
  if (!body) return {error: 'no body'};
  const broken = [];
  for (const img of document.images) {
    try { await img.decode(); } catch (e) { broken.push(img.getAttribute('src') || '?'); }
    if (!img.naturalWidth) broken.push(img.getAttribute('src') || '?');
  }
  return {size: [body.scrollWidth, body.scrollHeight], text: body.innerText.trim().length,
          tables: document.getElementsByTagName('table').length, images: document.images.length,
          broken: [...new Set(broken)]};
})()"""


def chromium_path() -> str:
    """The Chromium binary; installed by tests/browser/up.sh when missing and run as root."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    if os.geteuid() == 0:
        up = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=900)
        found = shutil.which("chromium")
        if up.returncode == 0 and found:
            return found
        raise RuntimeError(f"tests/browser/up.sh could not install chromium: {up.stderr[-2000:]}")
    raise RuntimeError("chromium is not installed and this is not root: run `apt-get install "
                       "-y --no-install-recommends chromium` (or set $CHROMIUM)")  # fmt: skip


class Chromium:
    """One headless Chromium and one page, driven over the DevTools pipe."""

    def __init__(self, binary: str | None = None) -> None:
        binary = binary or chromium_path()
        self.profile = tempfile.mkdtemp(prefix="bfm-chromium-")
        self.log = open(Path(self.profile) / "stderr.log", "w+b")
        to_child, self._w = os.pipe()  # Chromium reads commands on its fd 3
        self._r, from_child = os.pipe()  # and writes replies and events on its fd 4

        def fds() -> None:  # in the child: the pipe ends onto fds 3 and 4, kept at exec
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}",
             "about:blank"], pass_fds=(3, 4), preexec_fn=fds,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)  # fmt: skip
        os.close(to_child)
        os.close(from_child)
        self._buf, self._id = b"", 0
        self.exceptions: list[str] = []  # uncaught JavaScript exceptions of the page
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime"):
            self.send(f"{domain}.enable", session=self.session)

    def send(self, method: str, params: Mapping[str, Any] | None = None,
             session: str | None = None, timeout: float = TIMEOUT) -> dict[str, Any]:  # fmt: skip
        """One command; its result (RuntimeError with Chromium's error or its log)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": dict(params or {})}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline, method)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if reply.get("method") == "Runtime.exceptionThrown":
                details = reply["params"]["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                self.exceptions.append(str(text)[:500])

    def _next(self, deadline: float, method: str) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready = select.select([self._r], [], [], max(left, 0))[0]
            if not ready:
                raise TimeoutError(f"chromium did not answer {method} in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                self.log.seek(0)
                raise RuntimeError(f"chromium exited: {self.log.read()[-2000:].decode()}")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def evaluate(self, expression: str, context: int | None = None) -> Any:
        """A JavaScript expression's value (promises awaited); RuntimeError on a throw."""
        params: dict[str, Any] = {"expression": expression, "awaitPromise": True,
                                  "returnByValue": True}  # fmt: skip
        if context is not None:
            params["contextId"] = context
        out = self.send("Runtime.evaluate", params, session=self.session, timeout=TIMEOUT + 10)
        if "exceptionDetails" in out:
            raise RuntimeError(f"javascript error: {out['exceptionDetails']}")
        return out["result"].get("value")

    def open(self, url: str, ready: str) -> None:
        """Navigate and wait until the ``ready`` expression is true."""
        self.send("Page.navigate", {"url": url}, session=self.session)
        deadline = time.monotonic() + TIMEOUT
        while not self.evaluate(ready):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: the page was not ready in {TIMEOUT:.0f} s")
            time.sleep(0.1)

    def frame_context(self, url: str) -> int:
        """An isolated world in the (first) child frame showing ``url``."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            tree = self.send("Page.getFrameTree", session=self.session)["frameTree"]
            frames = [c["frame"] for c in _descendants(tree)]
            match = [f for f in frames if f.get("url") == url]
            if match:
                world = self.send("Page.createIsolatedWorld", {"frameId": match[0]["id"],
                                  "worldName": "bfm-check"}, session=self.session)  # fmt: skip
                return int(world["executionContextId"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"no frame showed {url[:80]} in {TIMEOUT:.0f} s")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def _descendants(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for child in tree.get("childFrames", []):
        yield child
        yield from _descendants(child)


@contextmanager
def report_page(report: str | Path) -> Iterator[Path]:
    """The report.html to open: the file itself, or the one inside an extracted zip."""
    report = Path(report)
    if report.suffix != ".zip":
        yield report.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="bfm-report-") as tmp:
        with zipfile.ZipFile(report) as z:
            z.extractall(tmp)
        pages = sorted(Path(tmp).rglob("report.html"), key=lambda p: len(p.parts))
        if not pages:
            raise AssertionError(f"{report}: no report.html in the zip")
        yield pages[0]


def _label_key(labels: Mapping[str, Any]) -> str:
    return json.dumps({str(k): str(v) for k, v in labels.items()}, sort_keys=True)


def _check_labels(entries: list[dict[str, Any]], expected: Iterable[Mapping[str, Any]]) -> None:
    have = Counter(_label_key(e["labels"]) for e in entries)
    want = Counter(_label_key(x) for x in expected)
    if have != want:
        raise AssertionError(
            "the report's results differ from the expected ones: missing "
            f"{sorted((want - have).elements())}, unexpected {sorted((have - want).elements())}"
        )


def _problems(shown: dict[str, Any], frame: dict[str, Any] | None) -> list[str]:
    """What is wrong with one shown result (nothing: it is displayed)."""
    if shown.get("error"):
        return [shown["error"]]
    out = []
    if not (shown["box"][0] > 0 and shown["box"][1] > 0):
        out.append(f"its {shown['kind']} has an empty box {shown['box']}")
    if shown["kind"] == "img" and not (shown["size"][0] > 0 and shown["size"][1] > 0):
        out.append(f"the image has natural size {shown['size']}")
    if frame is not None:
        if frame.get("error"):
            out.append(frame["error"])
        elif not (frame["size"][0] > 0 and frame["size"][1] > 0) or not frame["text"]:
            out.append(f"the HTML document is empty (size {frame['size']}, {frame['text']} chars)")
        elif frame["broken"]:
            out.append(f"images in the HTML do not load: {frame['broken']}")
    return out


def assert_figures_displayed(
    report: str | Path,
    expected_labels: Iterable[Mapping[str, Any]],
    browser: Chromium | None = None,
) -> dict[str, dict[str, Any]]:
    """Open ``report`` in headless Chromium and check that every result is displayed (see the
    module docstring); ``expected_labels``: the labels dict of every result, exactly;
    ``browser``: a running :class:`Chromium` to reuse (default: one started and closed here).
    Returns per result path what was shown: ``kind`` (img or iframe), ``box``, ``size`` (an
    image's natural size), ``frame`` (an HTML result's size, text length, tables, images),
    ``mime``, ``labels``."""
    with report_page(report) as page:
        own = browser is None
        browser = browser or Chromium()
        try:
            browser.exceptions.clear()
            browser.open(page.as_uri(), _READY)
            entries = browser.evaluate(_LIST)
            _check_labels(entries, expected_labels)
            seen, errors = {}, []
            for entry in entries:
                path = entry["path"]
                shown = browser.evaluate(f"({_SHOW % {'ms': TIMEOUT * 1000}})({json.dumps(path)})")
                frame = None
                if shown.get("kind") == "iframe" and not shown.get("error"):
                    context = browser.frame_context(shown["url"])
                    frame = browser.evaluate(_FRAME % {"ms": TIMEOUT * 1000}, context)
                problems = _problems(shown, frame)
                if not entry["caption"]:
                    problems.append("it has no caption")
                errors += [f"{path} ({entry['mime']}): {p}" for p in problems]
                seen[path] = {**shown, "frame": frame, "mime": entry["mime"],
                              "labels": entry["labels"]}  # fmt: skip
            errors += [f"the report's JavaScript threw: {x}" for x in browser.exceptions]
        finally:
            if own:
                browser.close()
    if errors:
        raise AssertionError(f"{report}: results not displayed:\n" + "\n".join(errors))
    return seen
