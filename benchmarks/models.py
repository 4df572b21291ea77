"""Train-step and inference throughput of our models against PyTorch, in one process on one machine.

  pip install -r requirements-bench.txt      # PyTorch (CPU) and MONAI: benchmark only, never a runtime need
  python benchmarks/models.py [--models densenet121,unet] [--repeats 5] [--steps 2]

XLA flags as launch.py sets them (`ich_jax.xla_flags`); XLA_FLAGS in the
environment takes precedence.

- densenet121 at 256×256, batch 16, 3 channels, 6 outputs. JAX: our
  `densenet121` trained by the shared trainer's step (`ich_jax.train.loop`:
  make_experiment / make_train_step / make_predict_step, the quickstart's task
  and optimizer: weighted BCE, Adam with L2 2e-5). Peer: MONAI's DenseNet121
  (torchvision's layout; torchvision's densenet121 when MONAI is missing), the
  same loss and `torch.optim.Adam(weight_decay=2e-5)`, i.e. the same L2 form.
- unet at 160×160 (seed 002's patches), batch 8, 1 channel, width 64. JAX: our
  `unet` through the shared step with the segmentation task (per-pixel BCE).
  Peer: `TorchUNet` below, a layer-for-layer PyTorch twin (MONAI's BasicUNet
  is another network: instance norm, other widths), with equal parameter
  counts checked before timing.

Both frameworks run in this process with the machine's default threading (XLA
and PyTorch each use every core). The machine may be shared, so each repeat
times `--steps` JAX steps and `--steps` PyTorch steps back to back, each
after one untimed step of its own, alternating which goes first, and the
figures are medians over repeats: load that comes and goes hits both alike.
Prints images/second for both, the ratio JAX / PyTorch (> 1: JAX faster), and
the machine's facts.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

try:
  import torch
  from torch import nn
except ImportError as e:  # the benchmark's own requirement, not the package's
  raise SystemExit("benchmarks/models.py compares against PyTorch, which is not installed: "
                   "pip install -r requirements-bench.txt") from e

from ich_jax import xla_flags

# As launch.py gives a user: before JAX starts its backend.
xla_flags.apply()

import jax  # noqa: E402

from configs import quickstart, segmentation  # noqa: E402
from ich_jax.train import loop, sharding  # noqa: E402

LABEL_WEIGHTS = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)


# ---------------------------------------------------------------- PyTorch side

class _DoubleConv(nn.Sequential):
  def __init__(self, cin, cout):
    super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class TorchUNet(nn.Module):
  """ich_jax/models/unet.py in PyTorch: same convolutions, poolings, upsampling, skips and dropout."""

  def __init__(self, in_channels, num_classes, width=64, dropout=0.5):
    super().__init__()
    widths = [width * 2 ** i for i in range(5)]
    self.down = nn.ModuleList(_DoubleConv(a, b) for a, b in zip([in_channels] + widths[:-2], widths[:-1]))
    self.bottom = _DoubleConv(widths[-2], widths[-1])
    self.drop = nn.Dropout(dropout)
    # Keras/flax "same" for a 2×2 kernel pads (0, 1); so does torch's padding="same".
    self.up = nn.ModuleList(nn.Conv2d(c, c // 2, 2, padding="same") for c in reversed(widths[1:]))
    self.up_blocks = nn.ModuleList(_DoubleConv(c, c // 2) for c in reversed(widths[1:]))
    self.pre_out = nn.Conv2d(width, 2 * num_classes, 3, padding=1)
    self.out = nn.Conv2d(2 * num_classes, num_classes, 1)

  def forward(self, x):
    skips = []
    for i, block in enumerate(self.down):
      x = block(x)
      if i == len(self.down) - 1:
        x = self.drop(x)
      skips.append(x)
      x = nn.functional.max_pool2d(x, 2)
    x = self.drop(self.bottom(x))
    for up, block, skip in zip(self.up, self.up_blocks, reversed(skips)):
      x = torch.relu(up(nn.functional.interpolate(x, scale_factor=2, mode="nearest")))
      x = block(torch.cat([skip, x], dim=1))
    return self.out(torch.relu(self.pre_out(x)))


def torch_densenet121(in_channels, num_classes):
  """MONAI's DenseNet121 if installed (what a MONAI user trains), else torchvision's; (model, its name)."""
  try:
    from monai.networks.nets import DenseNet121
    import monai
    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes), \
        f"MONAI {monai.__version__} DenseNet121"
  except ImportError:
    import torchvision
    model = torchvision.models.densenet121(num_classes=num_classes)
    if in_channels != 3:
      raise SystemExit("torchvision's densenet121 takes 3 channels; install MONAI (requirements-bench.txt)")
    return model, f"torchvision {torchvision.__version__} densenet121 (MONAI not installed)"


def torch_loss(kind):
  if kind == "classification":
    w = torch.tensor(LABEL_WEIGHTS)
    return lambda logits, y: (nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * w
                              ).sum(-1).div(w.sum()).mean()
  return lambda logits, y: nn.functional.binary_cross_entropy_with_logits(logits, y)


class TorchCase:
  def __init__(self, model, kind, batch, lr, weight_decay):
    self.model, self.loss = model, torch_loss(kind)
    self.opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    self.x = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    if kind == "classification":
      self.y = torch.from_numpy(batch["labels"])
    else:
      self.y = torch.from_numpy((batch["mask"] > 0).astype(np.float32)[:, None])

  def train(self, steps):
    self.model.train()
    for _ in range(steps):
      self.opt.zero_grad(set_to_none=True)
      loss = self.loss(self.model(self.x), self.y)
      loss.backward()
      self.opt.step()
    return loss.item()

  def infer(self, steps):
    self.model.eval()
    with torch.inference_mode():
      for _ in range(steps):
        out = torch.sigmoid(self.model(self.x))
    return out.sum().item()


# -------------------------------------------------------------------- JAX side

class JaxCase:
  """Our model through the shared trainer's jitted train and predict steps."""

  def __init__(self, config, batch):
    # The batches here are ready model input (`image`), not the on-device pipeline's HU.
    config.data.preprocess_on = "host"
    self.exp = loop.make_experiment(config)
    self.state = self.exp.init_state()
    self.train_step = loop.make_train_step(self.exp)
    self.predict_step = loop.make_predict_step(self.exp)
    self.batch = sharding.put_batch(batch, sharding.batch_sharding(self.exp.mesh), self.exp.task.batch_keys)

  def train(self, steps):
    for _ in range(steps):
      self.state, metrics = self.train_step(self.state, self.batch)
    return float(metrics["loss"])

  def infer(self, steps):
    for _ in range(steps):
      out = self.predict_step(self.state, self.batch)
    jax.block_until_ready(out)
    return float(out["probabilities"].sum())


def param_count_jax(case: JaxCase) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(case.state["params"]))


def param_count_torch(model) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -------------------------------------------------------------------- the cases

def densenet_case(batch_size: int, size: int):
  c = quickstart.get_config()
  c.model.name = "densenet121"
  c.model.options = {}
  c.task.mask_loss_weight = 0.0           # MONAI's DenseNet121 has no mask head
  c.data.image_size = size
  c.train.batch_size = batch_size
  rng = np.random.default_rng(0)
  batch = {"image": rng.random((batch_size, size, size, 3), np.float32),
           "labels": (rng.random((batch_size, 6)) < 0.3).astype(np.float32)}
  model, peer = torch_densenet121(3, 6)
  return c, batch, model, peer, "classification"


def unet_case(batch_size: int, size: int):
  c = segmentation.get_config("unet")
  c.data.image_size = size
  c.train.batch_size = batch_size
  rng = np.random.default_rng(0)
  batch = {"image": rng.random((batch_size, size, size, 1), np.float32),
           "mask": (rng.random((batch_size, size, size)) < 0.05).astype(np.uint8)}
  model = TorchUNet(1, 1, width=c.model.options.width)
  return c, batch, model, "PyTorch twin of ich_jax unet (benchmarks/models.py TorchUNet)", "segmentation"


CASES = {"densenet121": (densenet_case, 16, 256), "unet": (unet_case, 8, 160)}


def timed(fn, steps) -> float:
  t = time.perf_counter()
  fn(steps)
  return time.perf_counter() - t


def compare(name, jax_case, torch_case, batch_size, *, steps, warmup, repeats):
  rows = {}
  for mode in ("train", "infer"):
    j, t = getattr(jax_case, mode), getattr(torch_case, mode)
    t0 = time.perf_counter()
    j(warmup)
    compile_s = time.perf_counter() - t0
    t(warmup)
    jax_ips, torch_ips = [], []
    for r in range(repeats):
      # Alternate who goes first so a load change mid-repeat favours neither.
      order = ((j, jax_ips), (t, torch_ips)) if r % 2 == 0 else ((t, torch_ips), (j, jax_ips))
      for fn, out in order:
        # One untimed step first: the step right after the other framework's
        # runs up to 1.4× slower (measured; freed memory and caches), which
        # a user training with one framework never pays.
        fn(1)
        out.append(steps * batch_size / timed(fn, steps))
    paired = statistics.median(a / b for a, b in zip(jax_ips, torch_ips))
    rows[mode] = (statistics.median(jax_ips), statistics.median(torch_ips), paired)
    print(f"  {mode:5s}  JAX {rows[mode][0]:7.2f} img/s   PyTorch {rows[mode][1]:7.2f} img/s   "
          f"ratio JAX/PyTorch {rows[mode][0] / rows[mode][1]:.2f} (median of per-repeat ratios {paired:.2f})\n"
          f"         runs: JAX {' '.join(f'{v:.2f}' for v in jax_ips)}; PyTorch {' '.join(f'{v:.2f}' for v in torch_ips)}; "
          f"JAX warm-up incl. compile {compile_s:.0f} s", flush=True)
  return rows


def machine_facts() -> list[str]:
  cpu = platform.processor()
  try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  facts = [f"cpu: {cpu}; os.cpu_count {os.cpu_count()}, usable {len(os.sched_getaffinity(0))}",
           f"load average at start (1/5/15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
           f"python {platform.python_version()}; jax {jax.__version__}; jaxlib {jax.lib.__version__}; "
           f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
           f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; devices {jax.devices()}"]
  try:
    import flax, optax
    facts[-2] += f"; flax {flax.__version__}; optax {optax.__version__}"
  except ImportError:
    pass
  return facts


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="densenet121,unet", help=f"comma-separated, of {', '.join(CASES)}")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--steps", type=int, default=2, help="steps per timed block")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (JAX compiles in the first)")
  p.add_argument("--batch", type=int, default=None, help="override each model's batch size")
  args = p.parse_args()
  torch.manual_seed(0)
  for line in machine_facts():
    print(line)
  summary = []
  for name in args.models.split(","):
    build, batch_size, size = CASES[name]
    batch_size = args.batch or batch_size
    config, batch, torch_model, peer, kind = build(batch_size, size)
    jax_case = JaxCase(config, batch)
    n_jax, n_torch = param_count_jax(jax_case), param_count_torch(torch_model)
    print(f"\n{name} {size}×{size} batch {batch_size}: JAX ich_jax.models '{config.model.name}' via the shared "
          f"train/predict steps vs {peer}\n  trainable parameters: JAX {n_jax:,}  PyTorch {n_torch:,}"
          + ("" if n_jax == n_torch else "  (DIFFER)"), flush=True)
    if n_jax != n_torch:
      raise SystemExit(f"{name}: parameter counts differ ({n_jax} vs {n_torch}): not the same network")
    torch_case = TorchCase(torch_model, kind, batch, float(config.optimizer.learning_rate),
                           float(config.optimizer.weight_decay))
    rows = compare(name, jax_case, torch_case, batch_size, steps=args.steps, warmup=args.warmup,
                   repeats=args.repeats)
    summary += [(name, mode, *r) for mode, r in rows.items()]
  print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
  print("\nmodel        mode   JAX img/s  PyTorch img/s  JAX/PyTorch  per-repeat median")
  for name, mode, j, t, paired in summary:
    print(f"{name:12s} {mode:5s}  {j:9.2f}  {t:13.2f}  {j / t:11.2f}  {paired:17.2f}")

if __name__ == "__main__":
  main()
