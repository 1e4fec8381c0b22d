"""The harvest's Prefect tasks: thin wrappers over ``obsharvest`` functions.

Each task is one library call plus what Prefect adds (a name in the UI, a run logger,
progress events, an archive concurrency slot). Tasks take settings built once per run
from the parameters (``obsharvest.flows.settings``), never the parameters themselves, and handle
batches (of targets, of images), never one image.
"""
