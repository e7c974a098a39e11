"""Service bindings, HTMLRewriter, js.WebSocket and the JS request written the way Cloudflare's docs and
templates write them, and an app in the image-redraw template's shape, run unchanged by a real `edgewise dev`.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from cloudflare_projects import poll, write_project
from dev_process import DevServer

# --- Service bindings --------------------------------------------------------------------------------

BACK_ENTRY = """\
from urllib.parse import urlparse

from workers import DurableObject, Response, WorkerEntrypoint


class Counter(DurableObject):
    async def increment(self):
        value = (await self.ctx.storage.get("n") or 0) + 1
        await self.ctx.storage.put("n", value)
        return value


class Admin(WorkerEntrypoint):
    async def whoami(self):
        return {"entrypoint": "Admin", "has_counter": hasattr(self.env, "COUNTER")}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        body = await request.text()
        return Response(f"Hello from Worker B: {request.method} {urlparse(request.url).path} {body}")

    def add(self, a, b):  # a plain (sync) method, as the RPC docs' Python tab writes it
        return a + b

    async def fail(self):
        raise ValueError("worker b refuses")

    async def echo(self, value):
        return value

    async def page(self, title):
        return Response(f"<h1>{title}</h1>", headers={"content-type": "text/html"})

    async def apply(self, callback, value):
        return await callback(value) * 10

    async def describe(self, request):
        return {"method": request.method, "url": request.url, "body": await request.text()}
"""

FRONT_ENTRY = """\
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/add":
            result = await self.env.WORKER_B.add(1, 2)
            return Response(f"Result: {result}")
        if path.startswith("/forward/"):
            return await self.env.WORKER_B.fetch(request)
        if path == "/url":
            reply = await self.env.WORKER_B.fetch("https://worker-b/hello", method="POST", body="ping")
            return Response(await reply.text(), status=reply.status)
        if path == "/admin":
            return Response.json(await self.env.ADMIN.whoami())
        if path == "/fail":
            try:
                await self.env.WORKER_B.fail()
            except Exception as error:
                return Response(str(error), status=500)
            return Response("no error")
        if path == "/echo":
            return Response.json(await self.env.WORKER_B.echo({"list": [1, "x", None], "ok": True, "f": 1.5}))
        if path == "/page":
            return await self.env.WORKER_B.page("made by b")
        if path == "/callback":
            async def double(value):
                return value * 2
            return Response(str(await self.env.WORKER_B.apply(double, 4)))
        if path == "/describe":
            return Response.json(await self.env.WORKER_B.describe(request))
        if path == "/count":
            namespace = self.env.COUNTER
            return Response.json(await namespace.get(namespace.idFromName("shared")).increment())
        return Response("Not Found", status=404)
"""


@pytest.fixture(scope="module")
def services(serve: Callable[..., DevServer], tmp_path_factory: pytest.TempPathFactory) -> DevServer:
    root = tmp_path_factory.mktemp("services")
    front = write_project(root / "worker_a", "worker_a", {
        "services": [{"binding": "WORKER_B", "service": "worker_b"},
                     {"binding": "ADMIN", "service": "worker_b", "entrypoint": "Admin"}],
        "durable_objects": {"bindings": [{"name": "COUNTER", "class_name": "Counter", "script_name": "worker_b"}]},
    }, FRONT_ENTRY)
    back = write_project(root / "worker_b", "worker_b", {
        "durable_objects": {"bindings": [{"name": "COUNTER", "class_name": "Counter"}]},
        "migrations": [{"tag": "v1", "new_sqlite_classes": ["Counter"]}],
    }, BACK_ENTRY)
    return serve(front, "-c", str(front / "wrangler.jsonc"), "-c", str(back / "wrangler.jsonc"))


def test_rpc_to_a_sync_method_and_a_named_entrypoint(services: DevServer) -> None:
    assert services.get("/add").text == "Result: 3"
    assert services.get("/admin").json() == {"entrypoint": "Admin", "has_counter": True}
    assert services.get("/echo").json() == {"list": [1, "x", None], "ok": True, "f": 1.5}


def test_fetch_through_a_service_binding_with_a_request_and_with_a_url(services: DevServer) -> None:
    forwarded = httpx.put(f"{services.url}/forward/me", content="body", timeout=10)
    assert forwarded.text == "Hello from Worker B: PUT /forward/me body", forwarded.text
    assert services.get("/url").text == "Hello from Worker B: POST /hello ping"


def test_an_error_in_the_callee_reaches_the_caller_with_its_message(services: DevServer) -> None:
    reply = services.get("/fail")
    assert reply.status_code == 500 and "worker b refuses" in reply.text, reply.text


def test_responses_requests_and_functions_over_rpc(services: DevServer) -> None:
    page = services.get("/page")
    assert page.text == "<h1>made by b</h1>" and page.headers["content-type"] == "text/html", page.text
    assert services.get("/callback").text == "80"
    described = httpx.post(f"{services.url}/describe", content="hi", timeout=10)
    assert described.json() == {"method": "POST", "url": f"{services.url}/describe", "body": "hi"}, described.text


def test_a_durable_object_class_of_the_other_worker(services: DevServer) -> None:
    assert [services.get("/count").json() for _ in range(2)] == [1, 2]


# --- HTMLRewriter, js.WebSocket and the JS request ---------------------------------------------------

JS_ENTRY = """\
import asyncio
from urllib.parse import urlparse

import js
from js import HTMLRewriter, WebSocketPair
from pyodide.ffi import create_proxy
from workers import Response, WorkerEntrypoint
from workers.htmlrewriter import HTMLRewriter as SdkHTMLRewriter

PAGE = (
    '<html><head><meta property="og:title" content="old"><title>t</title></head>'
    '<body><a href="https://example.org/a">a</a><img src="https://example.org/i.png">'
    '<div id="widget"></div></body></html>'
)


class AttributeRewriter:
    def __init__(self, attr_name):
        self.attr_name = attr_name

    def element(self, element):
        attr = element.getAttribute(self.attr_name)
        if attr:
            element.setAttribute(self.attr_name, attr.replace("example.org", "example.com"))


class MetaRemover:
    def element(self, element):
        element.remove()


class MetaInjector:
    def element(self, element):
        element.prepend('<meta property="og:title" content="new" />', html=True)


class DocumentEnd:
    def end(self, end):
        end.append("<!-- rewritten -->", html=True)


class AppendOnId:
    def element(self, element):
        if element.getAttribute("id") == "widget":
            element.append('<div class="cf-turnstile"></div>', {"html": True})


# Built once at module level, handlers wrapped with create_proxy, as the docs' examples do.
href = create_proxy(AttributeRewriter("href"))
src = create_proxy(AttributeRewriter("src"))
rewriter = HTMLRewriter.new().on("a", href).on("img", src)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/links":
            res = Response(PAGE, headers={"Content-Type": "text/html; charset=utf-8"})
            if res.headers["Content-Type"].startswith("text/html"):
                return rewriter.transform(res)
            return res
        if path == "/meta":
            remover = create_proxy(MetaRemover())
            injector = create_proxy(MetaInjector())
            widget = create_proxy(AppendOnId())
            page = await self.env.ASSETS.fetch(request.url.replace("/meta", "/page"))
            rewritten = HTMLRewriter.new()
            rewritten.on('meta[property^="og:"]', remover)
            rewritten.on("head", injector)
            rewritten.on("div", widget)
            return rewritten.transform(page.js_object)
        if path == "/sdk-rewriter":
            # The runtime SDK's Python rewriter: plain handler objects, on_document, no proxies.
            res = Response(PAGE, headers={"Content-Type": "text/html"})
            return SdkHTMLRewriter().on("a", AttributeRewriter("href")).on_document(DocumentEnd()).transform(res)
        if path == "/js-request":
            js_request = request.js_object
            return Response.json({"method": js_request.method, "header": js_request.headers.get("x-test"),
                                  "same": request._js_request.url == request.url})
        if path == "/ws-echo":
            client, server = WebSocketPair.new().object_values()
            server.accept()
            server.addEventListener("message", create_proxy(lambda event: server.send("echo:" + event.data)))
            return Response(None, status=101, web_socket=client)
        if path == "/ws-client":
            url = request.url.replace("http", "ws", 1).replace("/ws-client", "/ws-echo")
            received = asyncio.get_running_loop().create_future()
            ws = js.WebSocket.new(url)

            def on_open(event):
                ws.send("ping")

            def on_message(event):
                if not received.done():
                    received.set_result(event.data)

            ws.addEventListener("open", create_proxy(on_open))
            ws.addEventListener("message", create_proxy(on_message))
            data = await asyncio.wait_for(received, 5)
            ws.close()
            return Response(data)
        return Response("Not Found", status=404)
"""


@pytest.fixture(scope="module")
def js_worker(serve: Callable[..., DevServer], tmp_path_factory: pytest.TempPathFactory) -> DevServer:
    root = write_project(tmp_path_factory.mktemp("js-apis"), "python-js-apis", {
        "assets": {"directory": "./public", "binding": "ASSETS", "run_worker_first": True},
    }, JS_ENTRY)
    (root / "public").mkdir()
    (root / "public" / "page.html").write_text(
        '<html><head><meta property="og:title" content="old"><title>t</title></head>'
        '<body><div id="widget"></div><div id="other"></div></body></html>')
    return serve(root)


def test_html_rewriter_with_proxied_handlers_built_at_module_level(js_worker: DevServer) -> None:
    reply = js_worker.get("/links")
    assert reply.status_code == 200, reply.text
    assert '<a href="https://example.com/a">' in reply.text and '<img src="https://example.com/i.png">' in reply.text


def test_html_rewriter_on_a_static_asset_through_its_js_object(js_worker: DevServer) -> None:
    reply = js_worker.get("/meta")
    assert reply.status_code == 200, reply.text
    assert reply.text == ('<html><head><meta property="og:title" content="new" /><title>t</title></head>'
                          '<body><div id="widget"><div class="cf-turnstile"></div></div><div id="other"></div>'
                          '</body></html>'), reply.text


def test_the_sdk_htmlrewriter_module(js_worker: DevServer) -> None:
    reply = js_worker.get("/sdk-rewriter")
    assert reply.status_code == 200, reply.text
    assert '<a href="https://example.com/a">' in reply.text and reply.text.endswith("<!-- rewritten -->")


def test_the_js_request_behind_the_python_one(js_worker: DevServer) -> None:
    reply = js_worker.get("/js-request", headers={"x-test": "yes"})
    assert reply.json() == {"method": "GET", "header": "yes", "same": True}, reply.text


def test_an_outbound_js_websocket_with_proxied_listeners(js_worker: DevServer) -> None:
    reply = js_worker.get("/ws-client")
    assert reply.status_code == 200 and reply.text == "echo:ping", reply.text



# --- An app in the image-redraw template's shape: FastAPI, R2, a queue and a workflow ----------------

REDRAW_API = """\
import uuid

from fastapi import FastAPI, HTTPException, Request, Response

app = FastAPI()


@app.post("/api/jobs", status_code=202)
async def create_job(request: Request):
    image = await request.body()
    if not image:
        raise HTTPException(400, "The request body is empty.")
    env = request.scope["env"]
    job_id = uuid.uuid4().hex
    content_type = request.headers.get("content-type", "application/octet-stream")
    await env.BUCKET.put(f"originals/{job_id}", image, httpMetadata={"contentType": content_type},
                         customMetadata={"jobId": job_id})
    await env.JOBS.send({"jobId": job_id})
    return {"jobId": job_id, "status": "queued"}


@app.get("/api/jobs/{job_id}")
async def get_job(job_id: str, request: Request):
    env = request.scope["env"]
    if await env.BUCKET.head(f"outputs/{job_id}") is not None:
        return {"jobId": job_id, "status": "complete"}
    try:
        instance = await env.REDRAW.get(job_id)
        status = await instance.status()
    except Exception:
        return {"jobId": job_id, "status": "queued"}
    return {"jobId": job_id, "status": status["status"], "error": status.get("error")}


@app.get("/api/images/output/{job_id}")
async def get_image(job_id: str, request: Request):
    obj = await request.scope["env"].BUCKET.get(f"outputs/{job_id}")
    if obj is None:
        raise HTTPException(404, "Image not found.")
    http_metadata = obj.httpMetadata
    media_type = http_metadata.contentType if http_metadata is not None else None
    blob = await obj.blob()
    return Response(content=await blob.bytes(), media_type=media_type or "application/octet-stream",
                    headers={"x-form-type": obj.customMetadata["formType"]})
"""

REDRAW_WORKFLOW = """\
from workers import Blob, FormData, Response, WorkflowEntrypoint
from workers.workflows import NonRetryableError


class RedrawWorkflow(WorkflowEntrypoint):
    async def run(self, event, step):
        job_id = event["payload"]["jobId"]
        bucket = self.env.BUCKET

        @step.do()
        async def verify_original():
            if await bucket.head(f"originals/{job_id}") is None:
                raise NonRetryableError(f"No original stored for job {job_id}.")
            return f"originals/{job_id}"

        @step.do(config={"retries": {"limit": 2, "delay": "1 second", "backoff": "exponential"}})
        async def redraw(verify_original):
            source = await bucket.get(verify_original)
            original = await source.blob()
            image_bytes = await original.bytes()
            form = FormData()
            form["prompt"] = "redraw it"
            form.append("input_image_0", Blob(image_bytes, original.content_type or "image/png"), "input.png")
            serialized = Response(form)
            await bucket.put(f"outputs/{job_id}", image_bytes[::-1],
                             httpMetadata={"contentType": original.content_type},
                             customMetadata={"jobId": job_id,
                                             "formType": serialized.headers["content-type"].split(";")[0]})
            return {"key": f"outputs/{job_id}"}

        return await redraw()
"""

REDRAW_ENTRY = """\
from image_redraw.api import app
from image_redraw.workflow import RedrawWorkflow
from workers import WorkerEntrypoint, asgi

__all__ = ["Default", "RedrawWorkflow"]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await asgi.fetch(app, request, self.env)

    async def queue(self, batch, env, ctx):
        pending = []
        for message in batch.messages:
            body = message.body
            job_id = body.get("jobId") if isinstance(body, dict) else None
            if not job_id:
                message.ack()
                continue
            pending.append((message, {"id": job_id, "params": {"jobId": job_id}}))
        if pending:
            await self.env.REDRAW.create_batch([spec for _, spec in pending])
            for message, _ in pending:
                message.ack()
"""


def test_an_app_in_the_image_redraw_templates_shape(serve: Callable[..., DevServer],
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    root = write_project(tmp_path_factory.mktemp("image-redraw"), "image-redraw-worker", {
        "compatibility_date": "2026-08-21",
        "compatibility_flags": ["python_workers", "python_workflows_implicit_dependencies"],
        "assets": {"directory": "./public", "run_worker_first": ["/api/*"]},
        "r2_buckets": [{"binding": "BUCKET", "bucket_name": "image-redraw"}],
        "queues": {"producers": [{"binding": "JOBS", "queue": "image-redraw-jobs"}],
                   "consumers": [{"queue": "image-redraw-jobs", "max_batch_size": 10, "max_batch_timeout": 1,
                                  "max_retries": 3}]},
        "workflows": [{"name": "image-redraw", "binding": "REDRAW", "class_name": "RedrawWorkflow"}],
        "observability": {"enabled": True},
    }, REDRAW_ENTRY)
    (root / "src" / "image_redraw").mkdir()
    (root / "src" / "image_redraw" / "__init__.py").write_text("")
    (root / "src" / "image_redraw" / "api.py").write_text(REDRAW_API)
    (root / "src" / "image_redraw" / "workflow.py").write_text(REDRAW_WORKFLOW)
    (root / "public").mkdir()
    (root / "public" / "index.html").write_text("<h1>redraw</h1>")
    server = serve(root)
    assert server.get("/").text == "<h1>redraw</h1>"
    created = httpx.post(f"{server.url}/api/jobs", content=b"\x89PNG-image", headers={"content-type": "image/png"},
                         timeout=10)
    assert created.status_code == 202, created.text
    job = created.json()["jobId"]
    done = poll(lambda: server.get(f"/api/jobs/{job}"),
                lambda reply: reply.json().get("status") in ("complete", "errored"))
    assert done.json() == {"jobId": job, "status": "complete"}, done.text
    image = server.get(f"/api/images/output/{job}")
    assert image.content == b"egami-GNP\x89" and image.headers["content-type"] == "image/png", image.text
    assert image.headers["x-form-type"] == "multipart/form-data"
