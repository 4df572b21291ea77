"""Weight files of timm, torchvision, Cadene and Keras into the model zoo (`build(..., pretrained=PATH)`).

The file's suffix picks the reader: `.safetensors` (timm's published files, or
this module's own `convert` output; the `safetensors` package's numpy API, no
PyTorch), `.pth`/`.pt` (torchvision or Cadene state dicts; PyTorch reads them)
and `.h5` (the legacy Keras weight files that `keras.applications` downloads;
h5py). `ich_jax.models.weight_names` walks an ich-jax model beside the file's
names and pairs each parameter and running statistic with one tensor; nothing
is written into the model until every pair is found and fits, so a refused
file leaves the model as it was.

Heads and input channels (`load`): the file's classifier is loaded only when
the model has as many classes; otherwise it keeps its fresh initialisation and
the report says so. A first convolution for another number of input channels
than the file's three is adapted by `FIRST_CONV_RULES`.

The command line (`inspect`, `convert`) is `ich_jax.models.pretrained`.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ich_jax.models.weight_names import BINDERS, FIRST_CONV_RULES, PUBLISHED, PretrainedError, Weights, _Binder

__all__ = ["BINDERS", "FIRST_CONV_RULES", "PUBLISHED", "PretrainedError", "Report", "Weights", "load", "read",
           "save_converted"]


# --- Readers -----------------------------------------------------------------


def read(path: str | pathlib.Path) -> Weights:
  """The tensors of a .safetensors, .pth/.pt or .h5 file: floats as float32 numpy arrays, integers kept."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"pretrained weights {path}: no such file")
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    return _read_safetensors(path)
  if suffix in (".pth", ".pt", ".bin"):
    return _read_torch(path)
  if suffix in (".h5", ".hdf5"):
    return _read_keras_h5(path)
  raise PretrainedError(f"pretrained weights {path}: unknown format {suffix!r}; expected .safetensors, "
                        ".pth/.pt (PyTorch state dict) or .h5 (Keras weights)")


def _numeric(name: str, value, path) -> np.ndarray:
  array = np.asarray(value)
  if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
    raise PretrainedError(f"pretrained weights {path}: tensor {name!r} has dtype {array.dtype}, not a number")
  return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


def _read_safetensors(path: pathlib.Path) -> Weights:
  try:
    from safetensors import safe_open
  except ImportError as e:
    raise ImportError("reading .safetensors weights needs the `safetensors` package: pip install safetensors") from e
  tensors = {}
  try:
    with safe_open(str(path), framework="numpy") as f:
      metadata = dict(f.metadata() or {})
      for key in f.keys():
        tensors[key] = _numeric(key, f.get_tensor(key), path)
  except PretrainedError:
    raise
  except Exception as e:   # safetensors raises its own error types for truncated headers and data
    raise PretrainedError(f"pretrained weights {path}: not a readable safetensors file ({type(e).__name__}: {e}); "
                          "truncated or corrupt? Download it again") from e
  convention = "ich_jax" if metadata.get("format") == "ich_jax" else "torch"
  return Weights(str(path), convention, tensors, metadata)


def _read_torch(path: pathlib.Path) -> Weights:
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"pretrained weights {path}: reading a PyTorch .pth/.pt file needs PyTorch, which ich-jax "
                      "does not need otherwise (pip install torch, CPU wheels suffice). Or use the model's "
                      "timm .safetensors file, or convert this one once where PyTorch is installed: python -m "
                      "ich_jax.models.pretrained convert IN.pth OUT.safetensors --model NAME") from e
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:
    raise PretrainedError(f"pretrained weights {path}: PyTorch cannot read it ({type(e).__name__}: {e}); "
                          "truncated or corrupt? Download it again") from e
  # Training checkpoints wrap the state dict; DataParallel prefixes every name with "module.".
  for wrapper in ("state_dict", "model", "model_state_dict"):
    if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
      state = state[wrapper]
  if not isinstance(state, Mapping):
    raise PretrainedError(f"pretrained weights {path}: holds a {type(state).__name__}, not a state dict")
  tensors = {}
  for key, value in state.items():
    if not hasattr(value, "detach"):
      continue
    name = key[len("module."):] if key.startswith("module.") else key
    tensors[name] = _numeric(name, value.detach().float().numpy() if value.is_floating_point()
                             else value.detach().numpy(), path)
  return Weights(str(path), "torch", tensors)


def _read_keras_h5(path: pathlib.Path) -> Weights:
  import h5py
  try:
    f = h5py.File(str(path), "r")
  except OSError as e:
    raise PretrainedError(f"pretrained weights {path}: not a readable HDF5 file ({e}); truncated or corrupt? "
                          "Download it again") from e
  with f:
    root = f["model_weights"] if "model_weights" in f else f   # a whole saved model holds its weights there
    if "layer_names" not in root.attrs:
      raise PretrainedError(f"pretrained weights {path}: no 'layer_names' attribute, so not a Keras weight file "
                            "as keras.applications downloads them (Keras 3's .weights.h5 format is not read: "
                            "save with keras.src.legacy.saving.legacy_h5_format or use the published file)")
    layers, tensors = [], {}
    try:
      for raw in root.attrs["layer_names"]:
        layer = raw.decode() if isinstance(raw, bytes) else str(raw)
        group = root[layer]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
        if not names:
          continue
        layers.append(_keras_name(layer))
        for name in names:
          short = name.split("/")[-1].split(":")[0]
          tensors[f"{_keras_name(layer)}/{short}"] = _numeric(name, group[name][()], path)
    except (KeyError, OSError) as e:
      raise PretrainedError(f"pretrained weights {path}: unreadable layer data ({e}); truncated or corrupt?") from e
  return Weights(str(path), "keras", tensors, layers=layers)


def _keras_name(layer: str) -> str:
  # Keras 2 names DenseNet's layers "conv1/conv"; Keras 3 "conv1_conv".
  return layer.replace("/", "_")


# --- Binding: our parameters beside the file's tensors -------------------------


@dataclasses.dataclass
class Report:
  """What `load` did: pairs loaded, head and first-conv decisions, tensors in the file left unused."""
  path: str
  model: str
  loaded: int = 0
  notes: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    return f"{self.model}: {self.loaded} tensors from {self.path}" + "".join(f"; {n}" for n in self.notes)


# Files named in torchvision's pre-0.4 DenseNet checkpoints: "norm.1" for "norm1" (torchvision renames them too).
_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _normalise_torch_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in tensors.items():
    match = _OLD_DENSENET.match(key)
    out[match.group(1) + match.group(2) if match else key] = value
  return out


def _check_variant(weights: Weights, name: str, model) -> None:
  variant = getattr(model, "variant", "torchvision")
  if weights.convention == "keras" and name in ("mobilenet_v2", "densenet121", "densenet169") and variant != "keras":
    why = ("TF 'same' padding on its stride-2 convolutions and BatchNorm eps 1e-3" if name == "mobilenet_v2"
           else "BatchNorm eps 1.001e-5")
    raise PretrainedError(f"pretrained weights {weights.path} are Keras's {name}, which differs from torchvision's "
                          f"({why}): build it with config model.options.variant='keras'")
  if weights.convention == "torch" and variant == "keras":
    raise PretrainedError(f"pretrained weights {weights.path} are PyTorch-named; the model was built with "
                          "options.variant='keras': drop that option to load them")


def _bind(weights: Weights, name: str, model, *, first_conv_rule: str) -> _Binder:
  binder = _Binder(weights, name, first_conv_rule=first_conv_rule)
  if weights.convention == "ich_jax":
    _bind_ich_jax(binder, name, model)
    return binder
  if name not in BINDERS:
    raise PretrainedError(f"config model.pretrained: no pretrained loader for model {name!r}; loaders exist for "
                          f"{', '.join(sorted(BINDERS))}")
  torch_binder, keras_binder = BINDERS[name]
  _check_variant(weights, name, model)
  if weights.convention == "keras":
    if keras_binder is None:
      raise PretrainedError(f"pretrained weights {weights.path}: keras.applications has no {name}; its Keras "
                            f"loaders exist for {', '.join(n for n, (_, k) in BINDERS.items() if k)}")
    keras_binder(binder, model)
  else:
    binder.w = dataclasses.replace(weights, tensors=_normalise_torch_names(weights.tensors))
    torch_binder(binder, model)
  unused = [k for k in binder.w.tensors if k not in binder.used]
  if unused:
    raise PretrainedError(f"pretrained weights {weights.path} do not fit {name}: unexpected key {unused[0]!r} "
                          f"(shape {tuple(binder.w.tensors[unused[0]].shape)}; {len(unused)} unused in all)")
  return binder


def _state_items(model) -> Iterator[tuple[str, nnx.Variable]]:
  for path, variable in nnx.iter_graph(model):
    if isinstance(variable, nnx.Variable) and isinstance(variable, (nnx.Param, nnx.BatchStat)):
      yield ".".join(str(p) for p in path), variable


def _bind_ich_jax(binder: _Binder, name: str, model) -> None:
  tensors, meta = binder.w.tensors, binder.w.metadata
  if meta.get("model") != name:
    raise PretrainedError(f"pretrained weights {binder.w.path} were converted for model {meta.get('model')!r}, "
                          f"not {name!r}")
  variant = getattr(model, "variant", "torchvision")
  if meta.get("variant", "torchvision") != variant:
    raise PretrainedError(f"pretrained weights {binder.w.path} were converted from a {meta.get('variant')!r} "
                          f"model; build {name} with options.variant={meta.get('variant')!r}")
  head = getattr(model, "head", None)
  skip_head = (head is not None and "head.kernel" in tensors
               and binder._skip_head(head, tensors["head.kernel"].shape[-1], "head",
                                     tuple(k for k in tensors if k.startswith("head."))))
  for key, variable in _state_items(model):
    if skip_head and key.startswith("head."):
      continue
    if key.startswith("mask_head.") and key not in tensors:
      continue                  # an opt-in head that no ImageNet network has: stays freshly initialised
    array = binder.take(key)
    want = variable.get_value().shape
    if array.ndim == 4 and array.shape != want and array.shape[:2] == want[:2] and array.shape[3] == want[3]:
      array = binder._first_conv(array, key, want[2])
    binder.put(variable, array, key)
  unused = [k for k in tensors if k not in binder.used]
  if unused:
    raise PretrainedError(f"pretrained weights {binder.w.path} do not fit {name}: unexpected key {unused[0]!r}")


# --- Public API ---------------------------------------------------------------------


def load(model, name: str, path: str | pathlib.Path, *, first_conv_rule: str = "mean") -> Report:
  """Loads the file at `path` into `model` (model `name` of the registry), in place, all or nothing. The model's
  own head width and input channels decide whether the file's classifier loads and how its first convolution
  is adapted."""
  if first_conv_rule not in FIRST_CONV_RULES:
    raise ValueError(f"config model.first_conv_rule={first_conv_rule!r}; expected one of {FIRST_CONV_RULES}")
  weights = read(path)
  binder = _bind(weights, name, model, first_conv_rule=first_conv_rule)
  for variable, array in binder.pairs:
    variable.set_value(jnp.asarray(array, dtype=variable.get_value().dtype))
  return Report(str(path), name, loaded=len(binder.pairs), notes=binder.notes)


def save_converted(model, name: str, out: str | pathlib.Path, *, source: str) -> None:
  """Writes `model`'s parameters and running statistics as safetensors under nnx state paths."""
  from safetensors.numpy import save_file
  out = pathlib.Path(out)
  tensors = {key: np.ascontiguousarray(np.asarray(v.get_value(), np.float32)) for key, v in _state_items(model)}
  meta = {"format": "ich_jax", "model": name, "variant": str(getattr(model, "variant", "torchvision")),
          "source": source}
  tmp = out.with_name(out.name + ".tmp")
  save_file(tensors, str(tmp), metadata=meta)
  tmp.replace(out)
