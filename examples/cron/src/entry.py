"""A Cron Trigger: `scheduled` records its last run; `fetch` reports it (per PoP, as module state is per isolate)."""

from datetime import UTC, datetime

from workers import Response, WorkerEntrypoint

last_run = None  # this isolate's most recent scheduled run


class Default(WorkerEntrypoint):
    async def scheduled(self, controller, env, ctx):
        global last_run
        when = datetime.fromtimestamp(controller.scheduledTime / 1000, UTC)
        last_run = {"cron": controller.cron, "scheduledTime": controller.scheduledTime, "at": when.isoformat()}
        print(f"cron {controller.cron!r} ran at {last_run['at']}")

    async def fetch(self, request):
        return Response.json({"colo": request.cf.colo, "last_run": last_run})
