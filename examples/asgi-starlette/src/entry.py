"""A Starlette app served by a Python Worker: `asgi.fetch` turns each Worker request into an ASGI call."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from workers import WorkerEntrypoint


async def index(request):
    return JSONResponse({"app": "starlette", "routes": ["GET /", "GET /env", "POST /echo"]})


async def show_env(request):
    # the adapter puts the Worker's env (vars, secrets, bindings) in the ASGI scope
    return JSONResponse({"MESSAGE": request.scope["env"].MESSAGE})


async def echo(request):
    body = await request.body()
    return JSONResponse({
        "method": request.method,
        "content_type": request.headers.get("content-type"),
        "body": body.decode("utf-8", "replace"),
        "colo": request.headers.get("cf-ray", "").rsplit("-", 1)[-1],
    })


app = Starlette(routes=[
    Route("/", index),
    Route("/env", show_env),
    Route("/echo", echo, methods=["POST"]),
])


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        import asgi

        return await asgi.fetch(app, request, self.env)
