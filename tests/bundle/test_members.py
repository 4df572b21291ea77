"""A member's entry read back: its sliding window, and its preprocessing plan from the `data` fields."""
from ich_jax.bundle import members


def test_a_members_window_is_its_tasks_and_whole_slices_have_none():
  patch = {"task": {"name": "segmentation", "patch": 16, "stride": 8}}
  assert members.window(patch) == {"patch": 16, "stride": 8}
  assert members.window({"task": {"name": "segmentation"}}) is None
  assert members.window({"task": {"name": "multilabel_classification"}}) is None


def test_the_plan_is_rebuilt_from_the_data_fields_without_augmentation():
  data = {"image_size": 32, "recipe": [[0, 40, 80], [0, 80, 200]], "intensity": "window", "clip_range": [0, 80],
          "clip_out_range": [0, 1]}
  plan = members.plan_of(data)
  assert plan.image_size == 32 and [list(r[:3]) for r in plan.recipe] == data["recipe"]
  assert plan.clip_range == (0.0, 80.0) and not plan.augment.enabled
