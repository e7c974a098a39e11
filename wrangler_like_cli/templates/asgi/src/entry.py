"""{{name}}: a Starlette app served by a Python Worker through the ASGI adapter."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from workers import WorkerEntrypoint


async def home(request):
    return JSONResponse({"worker": "{{name}}", "path": request.url.path})


app = Starlette(routes=[Route("/", home)])


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        import asgi

        return await asgi.fetch(app, request, self.env)
