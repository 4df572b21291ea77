"""Input pipeline throughput: windowed 3-channel 256x256 slices per second per core.

  python benchmarks/input_pipeline.py [--studies 10] [--batches 40] [--batch-size 32] [--workdir DIR]
                                      [--encodings none,zlib] [--records 100000] [--repeats 2] [--malloc launch]

Ours: a built ArrayRecord dataset read through `tfds.data_source` (decoded by
`ich_jax.data.records`, as `datasets.open_split` opens it) and the grain
pipeline (`ich_jax.data.pipeline.train_iterator`, `default_data_config()` with
recipe `windows.RSNA_3WINDOW`, image_size 256), augmentation on and off, with
1 read thread and with the pipeline's default threads, in two modes:

- host (`config.data.preprocess_on = "host"`, what "auto" picks on a CPU):
  grain makes the float32 windowed (and warped) slices;
- on-device (`preprocess_on = "device"`, what "auto" picks on an accelerator):
  grain hands over int16 HU and the affine maps, and the jitted train step
  warps, windows and resizes (`ich_jax.data.on_device.TrainFinish`). The host rows count only the host's
  work, which is what feeds an accelerator; the finish's own cost is printed
  separately, run here by XLA:CPU (on an accelerator it is not host time).

Peer (what a user would otherwise write): for each DICOM file on disk,
`pydicom.dcmread` + HU (`ich_jax.data.dicom.to_hu`, i.e. pydicom's modality
LUT) + the same three windows, stacked to [256, 256, 3] float32.

Data: a benchmark-only TFDS config of the `synthetic_ich` builder
(`bench256`: `--studies` phantom studies at a native 256 matrix, 5 mm slices,
up to 32 slices each, all in one "train" split), built into `--workdir`
(a temp dir by default) in well under a minute; then the very same slices are
read back from the ArrayRecord dataset and written as DICOM with
`ich_jax.data.dicom.write_series`, one series per study. Both sides decode the
same HU slices. `--encodings` adds builds of the same phantoms with `image` and
`mask` stored another way (`none`: TFDS's default int64 varint lists, as the
builders stored them before; `zlib`: zlib-compressed bytes) for the host rows.

`--malloc launch` (the default) sets glibc's malloc thresholds as launch.py
does (`ich_jax.host_malloc`); `--malloc glibc` leaves glibc's defaults.
`[TFDS decode]` rows read the same records through TFDS's own per-feature
decoding instead.

Each figure is the best of `--repeats` runs. Per-core figures are CPU-time
based: slices / process CPU seconds (all threads
of this process), so they stay fair on a shared machine; wall-clock rates are
printed too, and the load average before and after.
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
from ich_jax import host_malloc
from ich_jax.data import config_defaults, dicom, pipeline, records, series_index, windows

RESOLUTION = 256


class InputPipelineBench(synthetic_ich.SyntheticIch):
  """`synthetic_ich` with one benchmark-only config (registered under this class's name)."""
  BUILDER_CONFIGS = []
  ENCODING = None  # None: the builder's own (data_builders.schemas.pixels, raw bytes)

  def _info(self):
    info = super()._info()
    if self.ENCODING is None:
      return info
    import tensorflow_datasets as tfds

    features = dict(info.features)
    for key in ("image", "mask"):
      f = features[key]
      features[key] = tfds.features.Tensor(shape=f.shape, dtype=f.np_dtype, encoding=self.ENCODING)
    return tfds.core.DatasetInfo(builder=self, description=info.description,
                                 features=tfds.features.FeaturesDict(features), homepage=info.homepage)


class InputPipelineBenchNone(InputPipelineBench):
  """image/mask as TFDS's default for integer Tensors: int64 varint lists in the tf.train.Example (~570 kB a record)."""
  ENCODING = "none"


class InputPipelineBenchZlib(InputPipelineBench):
  """image/mask as zlib-compressed raw bytes (inside ArrayRecord's own zstd)."""
  ENCODING = "zlib"


ENCODED = {"none": InputPipelineBenchNone, "zlib": InputPipelineBenchZlib}


def _builder(data_dir: str, studies: int, cls=InputPipelineBench):
  config = synthetic_ich.SyntheticIchConfig(
      name="bench256", description="Input pipeline benchmark.", resolution=RESOLUTION,
      patients=(("train", studies),), p_second_study=0.0,
      phantom=(("matrix", RESOLUTION), ("pixel_spacing_mm", (0.8, 1.0)), ("slice_thickness_mm", (5.0,)),
               ("max_slices", 32)))
  return cls(data_dir=data_dir, config=config, file_format="array_record")


def build(workdir: pathlib.Path, studies: int, cls=InputPipelineBench):
  """Builds the ArrayRecord dataset (if needed) and writes its slices as DICOM; returns (source, files).

  The source is the split as `datasets.open_split` opens it (`records.decoded_source`).
  """
  import tensorflow_datasets as tfds

  builder = _builder(str(workdir / "tfds"), studies, cls)
  t0 = time.perf_counter()
  if not builder.is_prepared():
    tfds.display_progress_bar(False)
    builder.download_and_prepare()
  built_s = time.perf_counter() - t0
  source = records.decoded_source(builder, "train")
  dicom_dir = workdir / "dicom"
  t0 = time.perf_counter()
  files = sorted(dicom_dir.rglob("*.dcm"))
  if len(files) != len(source):
    by_series: dict[bytes, list[dict]] = {}
    for i in range(len(source)):
      rec = source[i]
      by_series.setdefault(series_index.as_bytes(rec["series_id"]), []).append(rec)
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


def data_config(augment: bool, threads: int | None, on_device: bool = False) -> ml_collections.ConfigDict:
  cfg = config_defaults.default_data_config()
  cfg.recipe = windows.RSNA_3WINDOW
  cfg.image_size = RESOLUTION
  cfg.augment.enabled = augment
  cfg.preprocess_on = "device" if on_device else "host"
  if threads is not None:
    cfg.read_threads = threads
  return cfg


def best_of(repeats: int, fn, *args) -> dict:
  runs = [fn(*args) for _ in range(repeats)]
  return max(runs, key=lambda r: r["per_cpu_s"])


def bench_grain(source, cfg, batches: int, batch_size: int) -> dict:
  it = pipeline.train_iterator(series_index.as_series_source(source), cfg, global_batch_size=batch_size, seed=0)
  # Past the start-up transient (all threads starting at once, the prefetch
  # buffer filling), so the work in flight at the start and the end of the
  # timed window is the same and cancels.
  warmup = int(cfg.read_threads) + int(cfg.prefetch_batches) + 2
  for _ in range(warmup):
    batch = next(it)
  key = "hu" if cfg.preprocess_on == "device" else "image"
  assert batch[key].shape[:3] == (batch_size, RESOLUTION, RESOLUTION), batch[key].shape
  w0, c0 = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(it)
  r = _rates(batches * batch_size, time.perf_counter() - w0, time.process_time() - c0)
  del it
  return r


def bench_finish(source, cfg, batches: int, batch_size: int) -> dict:
  """CPU cost of the on-device finish (warp, windows) run by XLA:CPU on host batches (no grain in the timing)."""
  import jax

  from ich_jax.data import on_device

  finish = on_device.TrainFinish(cfg)
  keys = finish.host_keys(("image", "mask"))
  it = pipeline.train_iterator(series_index.as_series_source(source), cfg, global_batch_size=batch_size, seed=0)
  host = [{k: b[k] for k in keys} for b in (next(it) for _ in range(min(batches, 8)))]
  step = jax.jit(finish)
  jax.block_until_ready(step(host[0]))
  w0, c0 = time.perf_counter(), time.process_time()
  for i in range(batches):
    jax.block_until_ready(step(host[i % len(host)]))
  return _rates(batches * batch_size, time.perf_counter() - w0, time.process_time() - c0)


def _combined(a: dict, b: dict) -> dict:
  """Both stages run one after the other on the same slices (CPU seconds add up)."""
  return _rates(a["slices"], a["wall_s"] + b["wall_s"] * a["slices"] / b["slices"],
                a["cpu_s"] + b["cpu_s"] * a["slices"] / b["slices"])


def _line(name: str, r: dict) -> str:
  return (f"{name:<52s} {r['per_cpu_s']:8.0f} slices/s/core (CPU)  {r['per_wall_s']:8.0f} slices/s wall  "
          f"[{r['slices']} slices, {r['cpu_s']:.2f} CPU s, {r['wall_s']:.2f} wall s]")


def _backend() -> str:
  import jax

  return jax.default_backend().upper()


def _load() -> str:
  return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--studies", type=int, default=10)
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--repeats", type=int, default=2,
                 help="runs of each measurement; the best is kept (the machine is shared; the best is the least disturbed)")
  p.add_argument("--workdir", default=None, help="keep/reuse the built data here (default: a temp dir)")
  p.add_argument("--encodings", default="",
                 help="comma-separated other image/mask encodings to build and time (host rows): none, zlib")
  p.add_argument("--records", type=int, default=100_000,
                 help="also time the 1-thread rows with the slices presented as this many records (record i = "
                      "slice i mod n; 0: not): grain's index shuffle costs ~100 us per element over 291 records "
                      "but ~4 us over 100,000, so this is the per-element cost of a real-sized split")
  p.add_argument("--malloc", choices=("launch", "glibc"), default="launch",
                 help="launch: glibc malloc thresholds as launch.py sets them (ich_jax.host_malloc); "
                      "glibc: its defaults")
  p.add_argument("--profile", default=None, help="cProfile one 1-thread augmented run into this file")
  args = p.parse_args(argv)
  malloc = host_malloc.apply() if args.malloc == "launch" else False
  print(f"malloc: {'launch.py settings ' + os.environ.get('GLIBC_TUNABLES', '') if malloc else 'glibc defaults'}",
        flush=True)
  encodings = [e for e in args.encodings.split(",") if e]
  unknown = set(encodings) - set(ENCODED)
  if unknown:
    p.error(f"--encodings {sorted(unknown)}: expected some of {sorted(ENCODED)}")

  with tempfile.TemporaryDirectory(prefix="ich_bench_") as tmp:
    workdir = pathlib.Path(args.workdir or tmp)
    source, files = build(workdir, args.studies)
    print(f"load average (1/5/15 min) before: {_load()} on {os.cpu_count()} CPUs", flush=True)
    dcm = bench_dicom(files, args.repeats)
    print(_line("DICOM: pydicom + to_hu + 3 windows", dcm), flush=True)
    results = {}

    def run(label, src, threads, augment, on_device):
      cfg = data_config(augment, threads, on_device)
      name = f"{label}, aug {'on ' if augment else 'off'}, threads {cfg.read_threads}"
      results[name] = r = best_of(args.repeats, bench_grain, src, cfg, args.batches, args.batch_size)
      print(_line(name, r), flush=True)
      return r

    for threads in (1, None):
      for augment in (False, True):
        run("host", source, threads, augment, False)
    for augment in (False, True):
      host = run("on-device: host part", source, 1, augment, True)
      cfg = data_config(augment, 1, True)
      finish = best_of(args.repeats, bench_finish, source, cfg, args.batches, args.batch_size)
      backend = _backend()
      print(_line(f"  its finish on XLA:{backend}, aug {'on ' if augment else 'off'}", finish), flush=True)
      results[f"on-device: host part + finish on XLA:{backend}, aug {'on ' if augment else 'off'}"] = _combined(host, finish)
    for augment in (False, True):
      run("on-device: host part", source, None, augment, True)
    if args.records:
      from ich_jax.data import datasets

      many = datasets.RecordSubset(source, np.arange(args.records) % len(source))
      for on_device in (False, True):
        for augment in (False, True):
          run(f"{'on-device: host part' if on_device else 'host'} [{args.records:,} records]", many, 1, augment,
              on_device)
      tfds_source = _builder(str(workdir / "tfds"), args.studies).as_data_source(split="train")
      tfds_decoded = datasets.RecordSubset(tfds_source, many.rows)
      for augment in (False, True):
        run(f"on-device: host part [{args.records:,} records, TFDS decode]", tfds_decoded, 1, augment, True)
    for encoding in encodings:
      esource, _ = build(workdir, args.studies, ENCODED[encoding])
      for augment in (False, True):
        run(f"host, image/mask encoding {encoding}", esource, 1, augment, False)
    print(f"load average (1/5/15 min) after: {_load()}")
    for name, r in results.items():
      print(f"{name:<58s} {r['per_cpu_s']:6.0f} slices/s/core = {r['per_cpu_s'] / dcm['per_cpu_s']:.2f}x DICOM per core; "
            f"target >= 2000 slices/s/core: {'met' if r['per_cpu_s'] >= 2000 else 'MISSED'}")
    if args.profile:
      import cProfile
      cProfile.runctx("bench_grain(source, data_config(True, 1), args.batches, args.batch_size)",
                      globals(), {"source": source, "args": args, "bench_grain": bench_grain,
                                  "data_config": data_config}, args.profile)
      print(f"profile written to {args.profile}")


if __name__ == "__main__":
  main()
