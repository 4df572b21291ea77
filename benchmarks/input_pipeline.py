"""Input pipeline throughput: windowed 3-channel 256x256 slices per second per core.

  python benchmarks/input_pipeline.py [--studies 10] [--batches 40] [--batch-size 32] [--workdir DIR]

Ours: a built ArrayRecord dataset read through `tfds.data_source` and the grain
pipeline (`ich_jax.data.pipeline.train_iterator`, `default_data_config()` with
recipe `windows.RSNA_3WINDOW`, image_size 256), augmentation on and off, with
1 read thread and with the pipeline's default threads.

Peer (what a user would otherwise write): for each DICOM file on disk,
`pydicom.dcmread` + HU (`ich_jax.data.dicom.to_hu`, i.e. pydicom's modality
LUT) + the same three windows, stacked to [256, 256, 3] float32.

Data: a benchmark-only TFDS config of the `synthetic_ich` builder
(`bench256`: `--studies` phantom studies at a native 256 matrix, 5 mm slices,
up to 32 slices each, all in one "train" split), built into `--workdir`
(a temp dir by default) in well under a minute; then the very same slices are
read back from the ArrayRecord dataset and written as DICOM with
`ich_jax.data.dicom.write_series`, one series per study. Both sides decode the
same HU slices.

Each figure is the best of `--repeats` runs. Per-core figures are CPU-time
based: slices / process CPU seconds (all threads
of this process), so they stay fair on a shared machine; wall-clock rates are
printed too.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import pydicom

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import ml_collections

from data_builders.synthetic_ich import synthetic_ich
from ich_jax.data import dicom, pipeline, windows

RESOLUTION = 256


class InputPipelineBench(synthetic_ich.SyntheticIch):
  """`synthetic_ich` with one benchmark-only config (registered under this class's name)."""
  BUILDER_CONFIGS = []


class InputPipelineBenchBytes(InputPipelineBench):
  """The same, with `image` and `mask` stored as raw bytes (`Encoding.BYTES`) instead of TFDS's default.

  TFDS's default for an integer Tensor is an int64 varint list in the
  tf.train.Example: int16 HU (air = -1000, ten bytes as a negative varint)
  becomes ~570 kB per 256x256 record instead of 192 kB, and every read pays the
  varint decode. Benchmark-only: shows what a builder change would buy.
  """

  def _info(self):
    import tensorflow_datasets as tfds

    info = super()._info()
    features = dict(info.features)
    for key in ("image", "mask"):
      f = features[key]
      features[key] = tfds.features.Tensor(shape=f.shape, dtype=f.np_dtype, encoding=tfds.features.Encoding.BYTES)
    return tfds.core.DatasetInfo(builder=self, description=info.description,
                                 features=tfds.features.FeaturesDict(features), homepage=info.homepage)


def _builder(data_dir: str, studies: int, cls=InputPipelineBench):
  config = synthetic_ich.SyntheticIchConfig(
      name="bench256", description="Input pipeline benchmark.", resolution=RESOLUTION,
      patients=(("train", studies),), p_second_study=0.0,
      phantom=(("matrix", RESOLUTION), ("pixel_spacing_mm", (0.8, 1.0)), ("slice_thickness_mm", (5.0,)),
               ("max_slices", 32)))
  return cls(data_dir=data_dir, config=config, file_format="array_record")


def build(workdir: pathlib.Path, studies: int, cls=InputPipelineBench):
  """Builds the ArrayRecord dataset (if needed) and writes its slices as DICOM; returns (source, files)."""
  import tensorflow_datasets as tfds

  builder = _builder(str(workdir / "tfds"), studies, cls)
  t0 = time.perf_counter()
  if not builder.is_prepared():
    tfds.display_progress_bar(False)
    builder.download_and_prepare()
  built_s = time.perf_counter() - t0
  source = builder.as_data_source(split="train")
  dicom_dir = workdir / "dicom"
  t0 = time.perf_counter()
  files = sorted(dicom_dir.rglob("*.dcm"))
  if len(files) != len(source):
    by_series: dict[bytes, list[dict]] = {}
    for i in range(len(source)):
      rec = source[i]
      by_series.setdefault(pipeline._as_bytes(rec["series_id"]), []).append(rec)
    for k, (series, recs) in enumerate(sorted(by_series.items())):
      recs.sort(key=lambda r: int(r["slice_index"]))
      volume = np.stack([np.asarray(r["image"]) for r in recs])
      ps = np.asarray(recs[0]["pixel_spacing"], np.float64)
      thick = float(recs[0]["slice_thickness"])
      dicom.write_series(volume, (thick, float(ps[0]), float(ps[1])), dicom_dir / f"s{k:03d}",
                         z_positions=[float(r["z_position"]) for r in recs], slice_thickness=thick,
                         patient_id=str(recs[0]["patient_id"]), series_uid=series.decode())
    files = sorted(dicom_dir.rglob("*.dcm"))
  print(f"data: {len(source)} slices at {RESOLUTION}x{RESOLUTION} in {studies} studies; "
        f"ArrayRecord build {built_s:.1f} s, DICOM write {time.perf_counter() - t0:.1f} s; {workdir}", flush=True)
  return source, files


def _rates(n: int, wall: float, cpu: float) -> dict:
  return {"slices": n, "wall_s": wall, "cpu_s": cpu, "per_cpu_s": n / cpu, "per_wall_s": n / wall}


def bench_dicom(files, repeats: int) -> dict:
  recipe = windows.RSNA_3WINDOW
  best = None
  for _ in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    for f in files:
      hu = dicom.to_hu(pydicom.dcmread(f))
      image = windows.apply_recipe({0: hu}, recipe)
      assert image.shape == (RESOLUTION, RESOLUTION, 3)
    r = _rates(len(files), time.perf_counter() - w0, time.process_time() - c0)
    best = r if best is None or r["per_cpu_s"] > best["per_cpu_s"] else best
  return best


def data_config(augment: bool, threads: int | None) -> ml_collections.ConfigDict:
  cfg = pipeline.default_data_config()
  cfg.recipe = windows.RSNA_3WINDOW
  cfg.image_size = RESOLUTION
  cfg.augment.enabled = augment
  if threads is not None:
    cfg.read_threads = threads
  return cfg


def best_of(repeats: int, fn, *args) -> dict:
  runs = [fn(*args) for _ in range(repeats)]
  return max(runs, key=lambda r: r["per_cpu_s"])


def bench_grain(source, cfg, batches: int, batch_size: int) -> dict:
  it = pipeline.train_iterator(pipeline.as_series_source(source), cfg, global_batch_size=batch_size, seed=0)
  # Past the start-up transient (all threads starting at once, the prefetch
  # buffer filling), so the work in flight at the start and the end of the
  # timed window is the same and cancels.
  warmup = int(cfg.read_threads) + int(cfg.prefetch_batches) + 2
  for _ in range(warmup):
    batch = next(it)
  assert batch["image"].shape == (batch_size, RESOLUTION, RESOLUTION, 3), batch["image"].shape
  w0, c0 = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(it)
  r = _rates(batches * batch_size, time.perf_counter() - w0, time.process_time() - c0)
  del it
  return r


def _line(name: str, r: dict) -> str:
  return (f"{name:<44s} {r['per_cpu_s']:8.0f} slices/s/core (CPU)  {r['per_wall_s']:8.0f} slices/s wall  "
          f"[{r['slices']} slices, {r['cpu_s']:.2f} CPU s, {r['wall_s']:.2f} wall s]")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--studies", type=int, default=10)
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--repeats", type=int, default=2,
                 help="runs of each measurement; the best is kept (the machine is shared; the best is the least disturbed)")
  p.add_argument("--workdir", default=None, help="keep/reuse the built data here (default: a temp dir)")
  p.add_argument("--bytes", action="store_true",
                 help="also a bytes-encoded image/mask build of the same phantoms (see InputPipelineBenchBytes)")
  p.add_argument("--profile", default=None, help="cProfile one 1-thread augmented run into this file")
  args = p.parse_args(argv)

  with tempfile.TemporaryDirectory(prefix="ich_bench_") as tmp:
    workdir = pathlib.Path(args.workdir or tmp)
    source, files = build(workdir, args.studies)
    print(f"load: {os.getloadavg()} on {os.cpu_count()} CPUs", flush=True)
    dcm = bench_dicom(files, args.repeats)
    print(_line("DICOM: pydicom + to_hu + 3 windows", dcm), flush=True)
    results = {}
    for threads in (1, None):
      for augment in (False, True):
        cfg = data_config(augment, threads)
        name = f"grain ArrayRecord, aug {'on ' if augment else 'off'}, threads {cfg.read_threads}"
        results[(threads, augment)] = r = best_of(args.repeats, bench_grain, source, cfg, args.batches, args.batch_size)
        print(_line(name, r), flush=True)
    if args.bytes:
      bsource, _ = build(workdir, args.studies, InputPipelineBenchBytes)
      for threads in (1, None):
        for augment in (False, True):
          cfg = data_config(augment, threads)
          name = f"BYTES ArrayRecord, aug {'on ' if augment else 'off'}, threads {cfg.read_threads}"
          results[("bytes", threads, augment)] = r = best_of(args.repeats, bench_grain, bsource, cfg, args.batches, args.batch_size)
          print(_line(name, r), flush=True)
    for key, r in results.items():
      threads, augment = key[-2:]
      kind = "BYTES " if key[0] == "bytes" else ""
      print(f"ratio {kind}ArrayRecord/DICOM (aug {'on' if augment else 'off'}, threads {threads or 'default'}): "
            f"{r['per_cpu_s'] / dcm['per_cpu_s']:.2f}x per core; target >= 2000 slices/s/core: "
            f"{'met' if r['per_cpu_s'] >= 2000 else 'MISSED'}")
    if args.profile:
      import cProfile
      cProfile.runctx("bench_grain(source, data_config(True, 1), args.batches, args.batch_size)",
                      globals(), {"source": source, "args": args, "bench_grain": bench_grain,
                                  "data_config": data_config}, args.profile)
      print(f"profile written to {args.profile}")


if __name__ == "__main__":
  main()
