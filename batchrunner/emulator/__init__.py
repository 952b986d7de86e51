"""A local Stripe Sigma API for tests and benchmarks: real HTTP on loopback ports.

Example::

    async with serve_emulator(EmulatorConfig(scale=0.02, time_scale=0)) as emu:
        # POST f"{emu.api_base}/v1/sigma/query_runs" with Bearer emu.test_key, poll the run,
        # then GET f"{emu.files_base}/v1/files/{file_id}/contents".
        print(emu.stats()["query_runs_created"])

See :mod:`batchrunner.emulator.server` for the request pipeline and the decisions taken
where Stripe publishes nothing.
"""

from batchrunner.emulator.config import EmulatorConfig
from batchrunner.emulator.faults import FaultSpec
from batchrunner.emulator.ratelimit import RateLimits
from batchrunner.emulator.serving import EmulatorHandle, serve_emulator, serve_forever

__all__ = [
    "EmulatorConfig",
    "EmulatorHandle",
    "FaultSpec",
    "RateLimits",
    "serve_emulator",
    "serve_forever",
]
