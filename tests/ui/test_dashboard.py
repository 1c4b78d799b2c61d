"""The dashboard in a real browser (headless Chromium) against `backprop serve`: sign in with the printed key, see a
new job appear in the auto-refreshing list, watch its loss curve grow from the event stream (which the test drops
once, to check that the page resumes with Last-Event-ID), reach `succeeded`, open the model and predict, cancel a
second job, sign out. Screenshots go to $BACKPROP_TEST_ARTIFACTS (or the test's tmp_path)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_server import IRIS_NETWORK, SPECIES, iris_rows, ok, upload_iris
from tests.support.server import Server

pytestmark = pytest.mark.integration

# Long enough to watch the curve grow (about 12 s on a quiet 2-core machine, and epochs are published in batches
# about every second), seeded.
EPOCHS = 5000
IRIS_JOB = {
    "epochs": EPOCHS,
    "batch_size": 2,
    "optimizer": {"name": "adam", "learning_rate": 0.002},
    "validation_split": 0.2,
    "seed": 4,
}
WAIT_MS = 30_000
TRAIN_TIMEOUT_S = 180.0
CANNED_EVENTS = 3  # the first connection gets this many events, then "drops"

PAGE_STATE = """() => {
  const view = document.getElementById("view"), chart = document.getElementById("loss-chart");
  return {
    status: view.dataset.status || null,
    points: chart ? Number(chart.dataset.points || 0) : 0,
    epochEvents: chart ? Number(chart.dataset.epochEvents || 0) : 0,
    stream: chart ? chart.dataset.stream || null : null,
  };
}"""


def first_events(server: Server, key: str, job_id: str, n: int) -> tuple[str, str]:
    """The job's first `n` events exactly as the server streams them (after its `retry:` line), and the last id."""
    blocks: list[str] = []
    ids: list[str] = []
    with server.client(key) as c, c.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60.0) as response:
        assert response.status_code == 200, response.read()
        block: list[str] = []
        for line in response.iter_lines():
            if line:
                block.append(line)
                continue
            if block:
                blocks.append("\n".join(block) + "\n\n")
                ids += [f.removeprefix("id:").strip() for f in block if f.startswith("id:")]
            block = []
            if len(ids) >= n:
                break
    assert len(ids) == n, blocks
    return "".join(blocks), ids[-1]


def iris_csv_rows(indices: list[int]) -> str:
    features, _ = iris_rows()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width"])
    writer.writerows(features[i] for i in indices)
    return out.getvalue()


def test_dashboard_follows_a_job_live_and_predicts_with_its_model(
    start_server: Callable[[], Server], browser: Any, artifacts: Path
):
    from playwright.sync_api import expect

    server = start_server()
    key = server.printed_key()
    shots: list[Path] = []
    console: list[tuple[str, str]] = []
    page_errors: list[str] = []
    requests: list[str] = []

    def shot(name: str) -> None:
        path = artifacts / f"dashboard-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    with server.client(key) as c:
        dataset = upload_iris(c)
        network = ok(c.post("/v1/networks", json=IRIS_NETWORK), 201)

        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        try:
            # A stale key in storage: the first data call answers 401 and the page asks for a key again.
            page.goto(f"{server.url}/ui")
            expect(page.locator("#key-form")).to_be_visible()
            expect(page.locator("#sign-out")).to_be_hidden()
            page.evaluate("() => localStorage.setItem('backprop.apiKey', 'bp_live_not_a_real_key')")
            page.reload()
            expect(page.locator("#key-form")).to_be_visible()
            expect(page.locator("#key-error")).to_contain_text("rejected")
            assert page.evaluate("() => localStorage.getItem('backprop.apiKey')") is None

            page.fill("#api-key", "bp_live_wrong")
            page.click("#key-submit")
            expect(page.locator("#key-error")).to_contain_text("rejected")
            page.fill("#api-key", key)
            page.click("#key-submit")
            expect(page.locator("#jobs-table")).to_be_visible()
            expect(page.locator("#jobs-note")).to_contain_text("No jobs yet")
            assert page.evaluate("() => localStorage.getItem('backprop.apiKey')") == key

            # The list polls: a job created now shows up without a reload.
            body = {"network_id": network["id"], "dataset_id": dataset["id"], **IRIS_JOB}
            job = ok(c.post("/v1/jobs", json=body), 202)
            row = page.locator(f'#jobs-body tr[data-job-id="{job["id"]}"]')
            expect(row).to_be_visible(timeout=15_000)
            expect(row).to_contain_text(f"/ {EPOCHS}")
            shot("jobs-list")

            # The first events connection ends after CANNED_EVENTS events, as a dropped connection would; the
            # page must come back with Last-Event-ID and get the rest from the real stream.
            stream_calls: list[dict[str, str]] = []
            canned: dict[str, str] = {}

            def drop_first_stream(route: Any, request: Any) -> None:
                stream_calls.append(request.all_headers())
                if len(stream_calls) == 1:
                    canned["body"], canned["last_id"] = first_events(server, key, job["id"], CANNED_EVENTS)
                    # CRLF line ends and a comment, both legal SSE, exercise the page's parser beyond what ours sends.
                    sse = ": keepalive\r\n\r\n" + canned["body"].replace("\n", "\r\n")
                    route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=sse)
                else:
                    route.continue_()

            page.route("**/v1/jobs/*/events", drop_first_stream)
            row.locator("a").click()
            expect(page.locator("#loss-chart")).to_be_visible()

            # Watch the curve while the job runs: it must be drawn at several sizes, never shrinking.
            observed: list[dict[str, Any]] = []
            deadline_ms = TRAIN_TIMEOUT_S * 1000
            waited = 0
            while True:
                state = page.evaluate(PAGE_STATE)
                if not observed or state != observed[-1]:
                    observed.append(state)
                    if state["status"] == "running" and EPOCHS // 4 < state["points"] < EPOCHS and len(shots) == 1:
                        shot("job-training")
                if state["status"] in {"succeeded", "failed", "cancelled"} and state["stream"] == "done":
                    break
                assert waited < deadline_ms, f"the job page did not finish within {TRAIN_TIMEOUT_S} s: {observed[-5:]}"
                page.wait_for_timeout(100)
                waited += 100
            final = observed[-1]
            assert final["status"] == "succeeded", ok(c.get(f"/v1/jobs/{job['id']}"))
            points = [s["points"] for s in observed]
            assert points == sorted(points), points
            # Live growth after the reconnection, not just the canned events and then everything at once.
            canned_points = canned["body"].count("event: epoch")
            running = [s["points"] for s in observed if s["status"] == "running"]
            growing = {n for n in running if canned_points < n < EPOCHS}
            assert len(growing) >= 2, f"the curve did not grow while the job ran: {observed}"
            # Every epoch is plotted once, and none arrived twice across the reconnection.
            assert (final["points"], final["epochEvents"]) == (EPOCHS, EPOCHS), final
            assert len(stream_calls) >= 2
            assert "last-event-id" not in stream_calls[0]
            assert stream_calls[1].get("last-event-id") == canned["last_id"], stream_calls[1]
            assert stream_calls[1]["authorization"] == f"Bearer {key}"
            page.unroute("**/v1/jobs/*/events")

            expect(page.locator("#job-status .badge")).to_have_text("succeeded")
            expect(page.locator("#job-epoch")).to_have_text(f"epoch {EPOCHS} / {EPOCHS}")
            expect(page.locator("#cancel-job")).to_be_hidden()
            final_job = ok(c.get(f"/v1/jobs/{job['id']}"))
            val_accuracy = page.locator('#job-metrics dd[data-key="val_accuracy"]')
            assert float(val_accuracy.inner_text()) == pytest.approx(final_job["metrics"]["val_accuracy"], rel=1e-3)
            model_link = page.locator("#model-link")
            expect(model_link).to_be_visible()
            shot("job-succeeded")

            # The model page: its metrics and spec, and the predict form.
            model_link.click()
            expect(page.locator("#predict-form")).to_be_visible()
            expect(page.locator("#model-spec")).to_contain_text("4 inputs → 16 tanh → 3 softmax")
            expect(page.locator("#model-spec")).to_contain_text(", ".join(SPECIES))
            expect(page.locator('#model-metrics dd[data-key="val_accuracy"]')).to_be_visible()

            page.fill("#predict-input", "1, 2, 3")
            page.click("#predict-submit")
            expect(page.locator("#predict-error")).to_contain_text("this model takes 4")

            indices = [0, 50, 100]
            page.fill("#predict-input", iris_csv_rows(indices))
            page.click("#predict-submit")
            rows = page.locator("#predictions tbody tr")
            expect(rows).to_have_count(len(indices))
            shown = [rows.nth(i).get_attribute("data-label") for i in range(len(indices))]
            features, _ = iris_rows()
            expected = ok(
                c.post(f"/v1/models/{final_job['model_id']}/predict", json={"inputs": [features[i] for i in indices]})
            )["labels"]
            assert shown == expected == SPECIES
            shot("model-predict")

            page.fill("#predict-input", "[[5.1, 3.5, 1.4, 0.2]]")
            page.click("#predict-submit")
            expect(page.locator("#predictions tbody tr")).to_have_count(1)
            expect(page.locator("#predictions tbody tr td.label")).to_have_text("setosa")

            # A second, long job: the cancel button stops it and the page reaches `cancelled`.
            long_job = ok(c.post("/v1/jobs", json={**body, "epochs": 10_000}), 202)
            page.goto(f"{server.url}/ui#/jobs/{long_job['id']}")
            cancel = page.locator("#cancel-job")
            expect(cancel).to_be_visible()
            cancel.click()
            expect(page.locator("#job-status .badge")).to_have_text("cancelled", timeout=60_000)
            expect(cancel).to_be_hidden()
            assert ok(c.get(f"/v1/jobs/{long_job['id']}"))["status"] == "cancelled"
            shot("job-cancelled")

            page.click("#sign-out")
            expect(page.locator("#key-form")).to_be_visible()
            assert page.evaluate("() => localStorage.getItem('backprop.apiKey')") is None
        except Exception:
            page.screenshot(path=str(artifacts / "dashboard-failure.png"), full_page=True)
            raise
        finally:
            print(f"\ndashboard screenshots in {artifacts}: {', '.join(p.name for p in shots)}")  # noqa: T201
            context.close()

    assert not page_errors, page_errors
    csp = [text for kind, text in console if "Content Security Policy" in text or "Refused to" in text]
    assert not csp, csp
    outside = [url for url in requests if not url.startswith(server.url)]
    assert not outside, f"the page reached beyond its own server: {outside}"
    assert all(path.stat().st_size > 10_000 for path in shots), shots

