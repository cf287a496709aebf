"""How should a decoded tile travel from a worker to the daemon?

Measures, for tile sizes from 40 KB (10 s at 1 kHz) to 5 MB (40 s at
32 kHz), the round trip worker -> daemon of a float32 array by:
  pickle    conn.send(array)            (pickle + pipe + unpickle)
  bytes     conn.send_bytes(array)      (pipe only; np.frombuffer on arrival)  <- mef3fs
  shm       copy into a per-worker SharedMemory block, daemon copies out
Run:  .venv/bin/python bench/ipc.py
"""

import multiprocessing as mp
import time
from multiprocessing import shared_memory

import numpy as np

ROUNDS = 200


def worker(conn, mode, n, shm_name):
    arr = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    shm = shared_memory.SharedMemory(name=shm_name) if shm_name else None
    while conn.recv():
        if mode == "pickle":
            conn.send(arr)
        elif mode == "bytes":
            conn.send_bytes(arr)
        else:
            np.ndarray(n, np.float32, buffer=shm.buf)[:] = arr
            conn.send(n)
    if shm:
        shm.close()


def measure(mode, n):
    ctx = mp.get_context("spawn")
    shm = shared_memory.SharedMemory(create=True, size=4 * n) if mode == "shm" else None
    parent, child = ctx.Pipe()
    p = ctx.Process(target=worker, args=(child, mode, n, shm.name if shm else None))
    p.start()
    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        parent.send(True)
        if mode == "pickle":
            out = parent.recv()
        elif mode == "bytes":
            out = np.frombuffer(parent.recv_bytes(), np.float32)
        else:
            parent.recv()
            out = np.ndarray(n, np.float32, buffer=shm.buf).copy()
        times.append(time.perf_counter() - t)
        assert len(out) == n
    parent.send(False)
    p.join()
    if shm:
        shm.close()
        shm.unlink()
    return float(np.median(times))


def main():
    print("| tile (float32) | pickle MB/s | send_bytes MB/s | shared memory MB/s |")
    print("|---|---|---|---|")
    for n in (10_000, 327_680, 1_310_720):
        row = [f"{n * 4 / 1e6:.2f} MB"]
        for mode in ("pickle", "bytes", "shm"):
            row.append(f"{n * 4 / measure(mode, n) / 1e6:,.0f}")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
