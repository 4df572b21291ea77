"""ich-jax: intracranial hemorrhage detection, subtyping, segmentation and volume on head CT."""

# Label order used everywhere (dataset features, model outputs, metrics, reports).
# "any" first, then the five subtypes alphabetically, as in the RSNA 2019 challenge
# CSV and the seed 003 paper (§2, the 6-digit label vector).
LABELS = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
SUBTYPES = LABELS[1:]
