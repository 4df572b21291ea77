"""Records the reference frameworks' logits for tests/models/pretrained_cases.py (test-only; rerun by hand).

  python tests/models/make_pretrained_refs.py timm torchvision   # needs torch, torchvision, timm
  KERAS_BACKEND=jax python tests/models/make_pretrained_refs.py keras   # needs keras (any backend)

Each case's tensors are set to `golden_tensor(name, shape)` before the forward
pass, so a test can rewrite the same file without the framework. The full-size
networks' names and shapes go to pretrained_refs/full_names.json.gz (merged with
what is there, so the frameworks can be recorded by separate interpreters).
"""
from __future__ import annotations

import gzip
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import pretrained_cases as pc  # noqa: E402


def _torch_case(case: str, spec: dict) -> dict:
  import torch
  model = _torch_model(case)
  model.eval()
  unit = case == "timm_inception_resnet_v2"     # TF-slim's (and ours) BatchNorm has no scale: timm's holds ones
  state = {}
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      value = pc.golden_tensor(name, tensor.shape, unit_bn_scale=unit)
      tensor.copy_(torch.from_numpy(value).to(tensor.dtype))
      state[name] = list(tensor.shape)
    x = torch.from_numpy(pc.golden_input(case, spec["size"]).transpose(0, 3, 1, 2).copy())
    logits = model(x).numpy()
  return {"tensors": [[k, v] for k, v in state.items()], "logits": logits.tolist(),
          "reference": f"{spec['framework']} {_version(spec['framework'])}: {_describe(case)}"}


def _torch_model(case: str):
  import torch
  n = pc.NUM_CLASSES
  if case.startswith("timm_"):
    import importlib
    import timm
    densenet, irv2, resnet, senet, vgg = (importlib.import_module(f"timm.models.{m}") for m in (
        "densenet", "inception_resnet_v2", "resnet", "senet", "vgg"))
    if case == "timm_resnet18":
      return resnet.ResNet(resnet.BasicBlock, (1, 1, 1, 1), num_classes=n)
    if case == "timm_resnet50":
      return resnet.ResNet(resnet.Bottleneck, (1, 1, 1, 1), num_classes=n)
    if case == "timm_legacy_seresnext50_32x4d":
      return senet.SENet(senet.SEResNeXtBottleneck, (1, 1, 1, 1), groups=32, reduction=16, inplanes=64,
                         input_3x3=False, downsample_kernel_size=1, downsample_padding=0, num_classes=n)
    if case == "timm_densenet121":
      return densenet.DenseNet(block_config=(1, 2, 1, 1), num_classes=n)
    if case == "timm_mobilenetv2_100":
      return timm.create_model("mobilenetv2_100", pretrained=False, num_classes=n)
    if case in ("timm_vgg19", "timm_vgg19_bn"):
      norm = torch.nn.BatchNorm2d if case.endswith("_bn") else None
      return vgg.VGG(list(pc.TINY_VGG), num_classes=n, mlp_ratio=64 / 4096, norm_layer=norm)
    if case == "timm_inception_resnet_v2":
      model = irv2.InceptionResnetV2(num_classes=n)
      model.repeat = torch.nn.Sequential(*list(model.repeat)[:1])
      model.repeat_1 = torch.nn.Sequential(*list(model.repeat_1)[:1])
      model.repeat_2 = torch.nn.Sequential()
      return model
  import torchvision
  if case == "torchvision_mobilenet_v2":
    return torchvision.models.mobilenet_v2(num_classes=n)
  if case == "torchvision_vgg19":
    from torchvision.models import vgg as tv_vgg
    model = tv_vgg.VGG(tv_vgg.make_layers(list(pc.TINY_VGG), batch_norm=False), num_classes=n)
    # torchvision's classifier is sized for 512 channels: the same layers (names, [C, 7, 7] flattening), smaller.
    model.classifier[0] = torch.nn.Linear(16 * 49, 64)
    model.classifier[3] = torch.nn.Linear(64, 32)
    model.classifier[6] = torch.nn.Linear(32, n)
    return model
  raise KeyError(case)


def _describe(case: str) -> str:
  return {"timm_inception_resnet_v2": "InceptionResnetV2 with repeat[:1], repeat_1[:1], repeat_2 empty",
          "timm_vgg19": f"VGG(cfg={pc.TINY_VGG}, mlp_ratio=64/4096)",
          "timm_vgg19_bn": f"VGG(cfg={pc.TINY_VGG}, mlp_ratio=64/4096, BatchNorm)",
          "torchvision_vgg19": f"VGG(make_layers({pc.TINY_VGG})), classifier Linear(784, 64), (64, 32), (32, 10)"}.get(
              case, f"{case} as in make_pretrained_refs._torch_model")


def _version(framework: str) -> str:
  module = __import__(framework)
  return getattr(module, "__version__", "?")


def _keras_case(case: str, spec: dict) -> dict:
  import keras
  n, size = pc.NUM_CLASSES, spec["size"]
  if case == "keras_densenet121":
    from keras.src.applications import densenet
    model = densenet.DenseNet([1, 2, 1, 1], weights=None, input_shape=(size, size, 3), classes=n,
                              classifier_activation=None)
  elif case == "keras_mobilenet_v2":
    model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=n,
                                           classifier_activation=None)
  else:
    raise KeyError(case)
  layers = _keras_layers(model)
  x = pc.golden_input(case, size)
  logits = np.asarray(model(x, training=False))
  return {"layers": layers, "logits": logits.tolist(),
          "reference": f"keras {keras.__version__}: {case}"}


def _keras_layers(model) -> list:
  layers = []
  for layer in model.layers:
    if not layer.weights:
      continue
    weights = []
    for w in layer.weights:
      short = w.path.split("/")[-1]
      value = pc.golden_tensor(f"{layer.name}/{short}", w.shape, keras=True)
      w.assign(value)
      weights.append([short, list(w.shape)])
    layers.append([layer.name, weights])
  return layers


def _full_names(framework: str) -> dict:
  out = {}
  for (fw, ref_name), ours in pc.FULL.items():
    if fw != framework:
      continue
    if fw == "keras":
      import keras
      model = getattr(keras.applications, ref_name)(weights=None)
      out[f"keras/{ref_name}"] = {"ours": ours, "layers": [[layer.name, [[w.path.split("/")[-1], list(w.shape)]
                                                                         for w in layer.weights]]
                                                          for layer in model.layers if layer.weights]}
    else:
      import torch
      with torch.device("meta"):
        if fw == "timm":
          import timm
          model = timm.create_model(ref_name, pretrained=False)
        else:
          import torchvision
          model = getattr(torchvision.models, ref_name)()
      out[f"{fw}/{ref_name}"] = {"ours": ours, "tensors": [[k, list(v.shape)] for k, v in model.state_dict().items()]}
  return out


def main(frameworks: list[str]) -> None:
  for case, spec in pc.CASES.items():
    if spec["framework"] not in frameworks:
      continue
    record = _keras_case(case, spec) if spec["framework"] == "keras" else _torch_case(case, spec)
    record.update(case=case, size=spec["size"])
    pc.save_ref(case, record)
    print(f"{case}: {record['reference']}")
  path = pc.REFS / "full_names.json.gz"
  names = pc.load_full_names() if path.exists() else {}
  for fw in frameworks:
    names.update(_full_names(fw))
  with gzip.open(path, "wt") as f:
    json.dump(names, f, sort_keys=True)
  print(f"{path}: {len(names)} networks")


if __name__ == "__main__":
  main(sys.argv[1:] or ["timm", "torchvision"])
