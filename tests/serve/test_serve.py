"""The Ray Serve application on a free loopback port with a tiny model: the OpenAI-compatible API answers what
model.answer answers, batches concurrent requests, refuses bad input with a 4xx JSON error and keeps serving, and
comes back after its replica is killed."""

import base64
import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import free_loopback_port, png_bytes, tiny_config

pytestmark = pytest.mark.slow
MAX_IMAGE_BYTES = 200_000


def post(url: str, body, timeout=120) -> tuple[int, dict | bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if r.headers.get_content_type() == "application/json" else raw
    except urllib.error.HTTPError as e:
        raw = e.read()
        if e.code >= 500 and not raw.startswith(b"{"):  # Serve's proxy itself (a replica died mid-request)
            return e.code, raw
        return e.code, json.loads(raw)


def get(url: str, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        raw = r.read()
        return r.status, json.loads(raw) if r.headers.get_content_type() == "application/json" else raw.decode()


def chat(image: bytes, question: str, **extra) -> dict:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    return {"model": "tiny", "max_tokens": 8, **extra,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": question}]}]}


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_session):
    from ray import serve

    from lare.model import LaReModel
    from lare.serve.app import app_builder

    tmp = tmp_path_factory.mktemp("serve")
    model = LaReModel.build(tiny_config("tiny-qwen3-vl", "lare", "method.latent_steps=3"))
    model.save_pretrained(tmp / "export")
    (tmp / "imgs").mkdir()
    (tmp / "imgs" / "a.png").write_bytes(png_bytes(96, 64, seed=3))
    (tmp / "secret.png").write_bytes(png_bytes(32, 32, seed=4))
    port = free_loopback_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_builder({"model": str(tmp / "export"), "name": "tiny", "max_batch_size": 4,
                           "batch_wait_timeout_s": 0.2, "image_root": str(tmp / "imgs"),
                           "max_image_bytes": MAX_IMAGE_BYTES, "max_body_bytes": 600_000}),
              name="lare", route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "model": LaReModel.from_pretrained(tmp / "export"), "tmp": tmp}
    serve.shutdown()


def test_answers_equal_model_answer_in_the_openai_shape(served):
    image = png_bytes(120, 80, seed=1)
    status, out = post(served["url"] + "/v1/chat/completions", chat(image, "What colour is the star?"))
    assert status == 200, out
    expected = served["model"].answer([image], ["What colour is the star?"], max_new_tokens=8)[0]
    assert out["object"] == "chat.completion" and out["model"] == "tiny"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": expected.answer}
    lare = out["lare"]
    assert lare["tokens"] == expected.tokens and lare["text"] == expected.text
    assert out["usage"]["total_tokens"] == expected.tokens["total"]
    assert out["usage"]["completion_tokens"] == expected.tokens["generated"]
    assert len(lare["refocus"]) == 3
    for got, want in zip(lare["refocus"], expected.refocus):
        assert got["grid"] == list(want.grid)
        np.testing.assert_allclose(got["regions"], want.regions)
        np.testing.assert_allclose(got["weights"], want.weights, atol=1e-6)
    # A path under the image root is the same as its bytes.
    body = chat(b"", "What colour is the star?")
    body["messages"][0]["content"][0]["image_url"]["url"] = "a.png"
    status, by_path = post(served["url"] + "/v1/chat/completions", body)
    assert status == 200, by_path
    assert by_path["lare"]["answer"] == served["model"].answer(
        [served["tmp"] / "imgs" / "a.png"], ["What colour is the star?"], max_new_tokens=8)[0].answer


def test_models_health_page_and_figure(served):
    assert get(served["url"] + "/v1/models")[1]["data"][0] == {"id": "tiny", "object": "model", "owned_by": "lare",
                                                             "lare": {"paradigm": "lare"}}
    assert get(served["url"] + "/healthz")[1]["status"] == "ok"
    status, page = get(served["url"] + "/")
    assert status == 200 and "/v1/chat/completions" in page and "http" not in page.replace("http-equiv", "")
    status, png = post(served["url"] + "/v1/refocus.png", chat(png_bytes(64, 64, seed=2), "Where is the star?"))
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size[0] > 300


def test_concurrent_requests_are_batched(served):
    images = [png_bytes(64, 64, seed=10 + i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda im: post(served["url"] + "/v1/chat/completions", chat(im, "Which shape?")), images))
    assert all(status == 200 for status, _ in outs)
    assert max(get(served["url"] + "/healthz")[1]["batch_sizes"]) > 1  # at least two requests shared a generation
    expected = served["model"].answer(images, ["Which shape?"] * 4, max_new_tokens=8)
    assert [o["lare"]["tokens"] for _, o in outs] == [e.tokens for e in expected]


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")  # a few kB that decode to 144 M pixels
    return buf.getvalue()


def _noise(bytes_at_least: int) -> bytes:
    side = int((bytes_at_least / 3) ** 0.5) + 8
    return png_bytes(side, side, seed=7)


@pytest.mark.parametrize("case, status, words", [
    ("not_an_image", 400, "not an image"),
    ("bomb", 413, "pixels"),
    ("image_too_big", 413, f"over {MAX_IMAGE_BYTES} bytes"),
    ("body_too_big", 413, "request body is over"),
    ("no_question", 400, "no question"),
    ("unknown_field", 400, "unknown fields: frequency_penalty"),
    ("outside_root", 403, "outside the server's image root"),
    ("not_json", 400, "not JSON"),
    ("two_images", 400, "exactly one image"),
    ("system_message", 400, "system messages are not supported"),
    ("earlier_turns", 400, "one question per request"),
])
def test_bad_input_is_a_4xx_json_error_and_the_service_goes_on(served, case, status, words):
    ok = png_bytes(48, 48)
    body = {
        "not_an_image": lambda: chat(b"GIF89a but not really", "Which?"),
        "bomb": lambda: chat(_bomb(), "Which?"),
        "image_too_big": lambda: chat(_noise(MAX_IMAGE_BYTES + 10_000), "Which?"),
        "body_too_big": lambda: json.dumps(chat(ok, "x" * 700_000)).encode(),
        "no_question": lambda: chat(ok, "  "),
        "unknown_field": lambda: chat(ok, "Which?", frequency_penalty=0.5),
        "outside_root": lambda: {**chat(ok, "Which?"), "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "../secret.png"}}, {"type": "text", "text": "Which?"}]}]},
        "not_json": lambda: b"{not json",
        "two_images": lambda: {**chat(ok, "Which?"), "messages": [{"role": "user", "content": [
            *chat(ok, "Which?")["messages"][0]["content"], chat(ok, "Which?")["messages"][0]["content"][0]]}]},
        "system_message": lambda: {**chat(ok, "Which?"), "messages": [
            {"role": "system", "content": "Answer in French."}, *chat(ok, "Which?")["messages"]]},
        "earlier_turns": lambda: {**chat(ok, "Which?"), "messages": [
            *chat(ok, "Which?")["messages"], {"role": "assistant", "content": "red"}, *chat(ok, "And now?")["messages"]]},
    }[case]()
    got, out = post(served["url"] + "/v1/chat/completions", body)
    assert got == status, out
    assert words in out["error"]["message"] and out["error"]["type"] == "invalid_request_error"
    assert post(served["url"] + "/v1/chat/completions", chat(ok, "Which?"))[0] == 200


def test_a_killed_replica_is_restarted_and_answers_again(served):
    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and "LaReServer" in a["name"]]
    assert replicas, "no LaReServer replica found"

    def ask(seed: int):
        try:
            return post(served["url"] + "/v1/chat/completions", chat(png_bytes(200, 200, seed=seed), "Which?"), timeout=60)[0]
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            return type(e).__name__
    with ThreadPoolExecutor(3) as pool:  # requests in flight while the replica dies: they end, none hangs
        in_flight = [pool.submit(ask, s) for s in range(3)]
        time.sleep(0.3)
        t0 = time.monotonic()
        ray.kill(ray.get_actor(replicas[0]["name"], namespace="serve"), no_restart=True)
        ended = [f.result(timeout=90) for f in in_flight]
    assert all(e == 200 or (isinstance(e, int) and e >= 500) or isinstance(e, str) for e in ended), ended
    deadline = t0 + 120
    while time.monotonic() < deadline:
        try:
            if post(served["url"] + "/v1/chat/completions", chat(png_bytes(40, 40), "Which?"), timeout=20)[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    else:
        pytest.fail("the service did not answer within 120 s of its replica being killed")
    now = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
           if a["namespace"] == "serve" and "LaReServer" in a["name"]]
    assert replicas[0]["name"] not in now and now, (replicas, now)  # a new replica answered, not the killed one


def test_the_command_line_serves_on_loopback_and_stops_on_ctrl_c(tmp_path):
    """lare-serve as a user runs it (its own local Ray): the page and API answer on 127.0.0.1 only, and SIGINT stops
    it cleanly."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from lare.model import LaReModel

    LaReModel.build(tiny_config("tiny-qwen3-vl", "direct")).save_pretrained(tmp_path / "export")
    port = free_loopback_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "jobs/serve.py", "--model", str(tmp_path / "export"), "--port", str(port)],
                            env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if get(f"http://127.0.0.1:{port}/healthz", timeout=5)[1]["paradigm"] == "direct":
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        else:
            pytest.fail("lare-serve did not come up within 180 s")
        listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port == port}
        assert listening == {"127.0.0.1"}, listening
        assert post(f"http://127.0.0.1:{port}/v1/chat/completions", chat(png_bytes(40, 40), "Which?"))[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, proc.stdout.read()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group, by its PID
            proc.wait()


def test_the_page_in_a_real_browser(served, tmp_path):
    """Headless Chromium from Debian's packages through its own chromedriver (nothing downloaded): load the page,
    give it an image and a question, wait for the answer and the step maps, keep a screenshot."""
    import os
    import shutil

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
        pytest.skip("chromium / chromedriver not installed (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1600"):
        options.add_argument(flag)
    image = tmp_path / "scene.png"
    image.write_bytes(png_bytes(160, 120, seed=5))
    browser = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        browser.get(served["url"] + "/")
        WebDriverWait(browser, 30).until(lambda b: "paradigm lare" in b.find_element(By.ID, "model").text)
        picker = browser.find_element(By.ID, "file")
        browser.execute_script("arguments[0].hidden = false", picker)
        picker.send_keys(str(image))
        browser.find_element(By.ID, "question").send_keys("What colour is the star?")
        WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "preview").get_attribute("src").startswith("data:"))
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "steps").get_attribute("data-ready"))
        expected = served["model"].answer([image], ["What colour is the star?"])[0]
        assert browser.find_element(By.ID, "answer").text == expected.answer
        assert len(browser.find_elements(By.CSS_SELECTOR, "#steps .step")) == len(expected.refocus) == 3
        assert f"<td>{expected.tokens['total']}</td>" in browser.find_element(By.ID, "tokens").get_attribute("innerHTML")
        assert browser.find_element(By.ID, "error").text == ""
        shot = Path(os.environ.get("LARE_SCREENSHOTS", tmp_path)) / "serve-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        browser.quit()
