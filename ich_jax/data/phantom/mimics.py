"""Mimics: normal findings at or above blood density (calcifications, dense dura, beam hardening)."""
from __future__ import annotations

import dataclasses
import math

from ich_jax.data.phantom.geometry import ell
from ich_jax.data.phantom.head import Head
from ich_jax.data.phantom.spec import PhantomSpec


@dataclasses.dataclass(frozen=True)
class Mimics:
  """A study's mimics of blood: calcifications, the density of falx and tentorium, beam hardening."""
  calcifications: tuple     # (name, Ell) pairs; Ell.hu is the calcium density
  falx_hu: float            # falx and superior sagittal sinus
  tentorium_hu: float
  beam_hardening: dict | None


def draw_mimics(rng, spec: PhantomSpec, head: Head) -> Mimics:
  """Calcifications, dense dura and beam hardening: normal findings at or above blood density."""
  a, b, c = head.a, head.b, head.c
  calcs = []
  if rng.random() < spec.p_pineal_calcification:
    r = rng.uniform(1.5, 3.5)
    pineal = ell((0.0, 0.20 * b, -0.08 * c), (r, r * 1.2, r), hu=rng.uniform(150, 450))
    calcs.append(("pineal_calcification", pineal))
  if rng.random() < spec.p_choroid_calcification:
    for side in (-1, 1):   # glomus of the choroid plexus, in the atria
      for _ in range(2):
        r = rng.uniform(1.2, 3.0)
        ctr = (side * (0.27 * a + 0.03 * a * head.vent_scale) + rng.normal(0, 1.5),
               0.30 * b + rng.normal(0, 2), 0.12 * c + rng.normal(0, 2))
        calcs.append(("choroid_calcification",
                      ell(ctr, (r, 1.3 * r, r), rng.uniform(0, 180), hu=rng.uniform(100, 350))))
  if rng.random() < spec.p_basal_ganglia_calcification:
    for side in (-1, 1):   # globus pallidus
      calcs.append(("basal_ganglia_calcification",
                    ell((side * 0.33 * a, -0.05 * b, 0.0), (2.5, 5.0, 3.0), hu=rng.uniform(100, 250))))
  falx_hu = rng.uniform(55, 80) if rng.random() < spec.p_dense_falx else head.falx_hu
  tent_hu = rng.uniform(55, 75) if rng.random() < spec.p_dense_tentorium else head.tentorium_hu
  bh = None
  if rng.random() < spec.p_beam_hardening:
    bh = {"amp": rng.uniform(8, 25), "bar": rng.uniform(5, 20), "k": 2 * math.pi / rng.uniform(5, 10),
          "angle": rng.uniform(0, math.pi), "phase": rng.uniform(0, 2 * math.pi)}
  return Mimics(tuple(calcs), falx_hu, tent_hu, bh)


# Order of Phantom.mimics.
MIMICS = ("pineal_calcification", "choroid_calcification", "basal_ganglia_calcification", "dense_falx",
          "dense_tentorium", "beam_hardening")
DENSE_DURA_HU = 50.0   # falx / tentorium denser than this reads as a mimic of blood
