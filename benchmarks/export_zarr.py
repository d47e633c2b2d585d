"""Benchmark `omero export --zarr` (a whole CLI process on the simulated server) against zarr
writing the same arrays from memory, in the same run.

Builds a simulated server with `--images` uint16 images of `--size` x `--size` pixels and
`--channels` channels (FakeReader pixels: `img&sizeX=...&pixelType=uint16.fake`) in one Dataset,
then alternates, `--repeat` times:
- the export: `python tests/sim/launcher.py export --zarr DEST Dataset:ID --workers N` in its own
  process (interpreter, CLI start-up, server reads, pyramid, metadata, index and syncfs
  included), its peak resident memory read from the kernel (wait4 rusage);
- the limit: the same arrays (every level, the same chunks and Blosc zstd compressor, computed
  beforehand and not timed) written with `zarr.open_array(...)[:] = array` from memory, one image
  at a time, then one `sync`.
Prints the times, the throughput of each in MB/s of full-resolution pixels, the ratio
export / limit (target >= 0.7 with --workers 2) and the export's peak memory against the bound
docs/export.md states (the same command on a 64x64 image + workers x chunk^2 x (12 x bytes per
pixel + 16)).

    .venv/bin/python benchmarks/export_zarr.py [--images 8] [--size 16384] [--channels 1]
                                               [--workers 2] [--repeat 1] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import numpy as np  # noqa: E402

from omero_cli_ext.zarr import ngff  # noqa: E402
from omero_cli_ext.zarr.writer import compressor  # noqa: E402
from sim import pixels as simpix  # noqa: E402
from sim.server import SimServer  # noqa: E402

LAUNCHER = os.path.join(ROOT, "tests", "sim", "launcher.py")
CHUNK = 1024
GNU_TIME = "/usr/bin/time"


def run_export(sim_root, dest, dataset, workers) -> tuple:
    """(seconds, CPU seconds, peak RSS in bytes) of one whole export command. CPU and peak are
    read by /usr/bin/time (GNU time forks from a small process: a child forked from this one
    would count this process's own memory in its ru_maxrss)."""
    argv = [sys.executable, LAUNCHER, "--sim-root", sim_root, "--sim-user", "alice", "export",
            "--zarr", dest, "Dataset:%d" % dataset, "--workers", str(workers), "--owner", "root"]
    with tempfile.NamedTemporaryFile("r") as stats:
        if os.access(GNU_TIME, os.X_OK):
            argv = [GNU_TIME, "-o", stats.name, "-f", "%M %U %S"] + argv
        began = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - began
        if proc.returncode:
            sys.exit("export failed (%d): %s" % (proc.returncode, proc.stderr.decode()))
        text = stats.read().strip()
    if not text:
        return elapsed, float("nan"), 0
    peak, user, system = text.splitlines()[-1].split()
    return elapsed, float(user) + float(system), int(peak) * 1024


def levels_of(spec) -> list:
    """Every level of one image as (t, c, z, y, x) arrays, as the export computes them."""
    info = type("Info", (), dict(size_x=spec.size_x, size_y=spec.size_y, size_z=1,
                                 size_c=spec.size_c, size_t=1))
    shapes = ngff.level_shapes(info)
    full = np.empty(shapes[0], dtype="<u2")
    for c in range(spec.size_c):
        full[0, c, 0] = simpix.fake_tile(spec, 0, 0, c, 0, 0, 0, spec.size_x, spec.size_y)
    levels = [full]
    for shape in shapes[1:]:
        above = levels[-1]
        level = np.empty(shape, dtype="<u2")
        for c in range(spec.size_c):
            level[0, c, 0] = ngff.downsample(above[0, c, 0])
        levels.append(level)
    return levels


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_limit(names, dest) -> tuple:
    """(seconds, CPU seconds) to write every level of every image with zarr from memory (the
    arrays are computed before and not counted)."""
    import zarr
    total = cpu_total = 0.0
    for number, name in enumerate(names):
        levels = levels_of(simpix.parse_fake(name))
        began, cpu_began = time.perf_counter(), cpu()
        for index, level in enumerate(levels):
            store = zarr.DirectoryStore(os.path.join(dest, "img%d" % number, str(index)),
                                        dimension_separator="/")
            array = zarr.open_array(store, mode="w", shape=level.shape, dtype=level.dtype,
                                    chunks=ngff.chunk_shape(level.shape, CHUNK),
                                    compressor=compressor())
            array[:] = level
        total += time.perf_counter() - began
        cpu_total += cpu() - cpu_began
        del levels
    began = time.perf_counter()
    os.sync()
    return total + time.perf_counter() - began, cpu_total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-zarr-", dir=args.dir)
    try:
        sim = SimServer(os.path.join(work, "server"))
        sim.add_group("lab", "rwr---")
        sim.add_user("alice", ["lab"])
        dataset = sim.add_dataset("D", "alice")
        os.makedirs(os.path.join(work, "src"))
        names = []
        for number in range(args.images):
            name = "img%d&sizeX=%d&sizeY=%d&sizeC=%d&pixelType=uint16.fake" % (
                number, args.size, args.size, args.channels)
            path = os.path.join(work, "src", name)
            open(path, "w").close()
            sim.import_fileset("alice", [path], target=("Dataset", dataset))
            names.append(name)
        pixel_bytes = args.images * args.size * args.size * args.channels * 2
        print("%d image(s) of %dx%d uint16 x %d channel(s): %.2f GB of full-resolution pixels, "
              "chunks %d, --workers %d" % (args.images, args.size, args.size, args.channels,
                                           pixel_bytes / 1e9, CHUNK, args.workers))
        exports, limits, export_cpus, limit_cpus, peaks = [], [], [], [], []
        for round_ in range(args.repeat):
            dest = os.path.join(work, "export%d" % round_)
            seconds, cpu_s, peak = run_export(sim.root, dest, dataset, args.workers)
            exports.append(seconds)
            export_cpus.append(cpu_s)
            peaks.append(peak)
            shutil.rmtree(dest)
            dest = os.path.join(work, "limit%d" % round_)
            seconds, cpu_s = run_limit(names, dest)
            limits.append(seconds)
            limit_cpus.append(cpu_s)
            shutil.rmtree(dest)
            print("round %d: export %.2f s (CPU %.2f s, peak RSS %.0f MiB), zarr from memory "
                  "%.2f s (CPU %.2f s)" % (round_ + 1, exports[-1], export_cpus[-1],
                                           peak / 2**20, limits[-1], limit_cpus[-1]))
        export_s, limit_s = statistics.median(exports), statistics.median(limits)
        print("throughput  export %.0f MB/s, zarr from memory %.0f MB/s"
              % (pixel_bytes / export_s / 1e6, pixel_bytes / limit_s / 1e6))
        print("ratio export / zarr from memory (throughput): %.2f (target >= 0.7)"
              % (limit_s / export_s))
        print("CPU seconds export / zarr from memory: %.2f (less sensitive to a busy machine; "
              "the export's include start-up, the simulated server and the pyramid)"
              % (statistics.median(export_cpus) / statistics.median(limit_cpus)))
        # the fixed part: the same command exporting one 64x64 image (interpreter, omero-py,
        # numpy, numcodecs, the CLI, one chunk in flight)
        tiny = sim.add_dataset("tiny", "alice")
        path = os.path.join(work, "src", "tiny&sizeX=64&sizeY=64&pixelType=uint16.fake")
        open(path, "w").close()
        sim.import_fileset("alice", [path], target=("Dataset", tiny))
        _seconds, _cpu, base = run_export(sim.root, os.path.join(work, "tiny"), tiny, args.workers)
        bound = base + args.workers * CHUNK * CHUNK * (12 * 2 + 16)
        print("peak memory %.0f MiB; documented bound %.0f MiB (a 64x64 export %.0f MiB + %d "
              "workers x 40 MiB): %s" % (max(peaks) / 2**20, bound / 2**20, base / 2**20, args.workers,
                               "within" if max(peaks) <= bound else "EXCEEDED"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
