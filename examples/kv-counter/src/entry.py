from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/counts":
            listed = await self.env.COUNTS.list(prefix="page:")
            counts = {}
            for key in listed["keys"]:
                counts[key["name"].removeprefix("page:")] = int(await self.env.COUNTS.get(key["name"]))
            return Response.json(counts)
        key = f"page:{path}"
        count = int(await self.env.COUNTS.get(key) or 0) + 1
        await self.env.COUNTS.put(key, str(count), metadata={"last_colo": request.cf.colo})
        return Response.json({"page": path, "count": count})
