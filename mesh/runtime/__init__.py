"""The real runtime: asyncio on uvloop, sockets, disk. Drives the sans-IO cores in mesh.core."""
