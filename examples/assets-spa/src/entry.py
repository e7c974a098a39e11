"""A single-page app's API: /api/* runs here; every other path is a file of public/ or the app's page."""

from urllib.parse import urlsplit

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlsplit(request.url).path
        if path == "/api/hello":
            return Response.json({"message": "Hello from the API", "colo": request.cf.colo})
        if path.startswith("/api/"):
            return Response.json({"error": f"no API route {path}"}, status=404)
        # A miss that is not a browser navigation (say fetch("/settings") from the page) comes here:
        # the assets binding answers it as the router would, with the app's page.
        return await self.env.ASSETS.fetch(request)
